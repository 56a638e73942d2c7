//! `tiommu walk`: translate IOVAs through AMD-Vi tables in a raw memory image. Not written yet
//! (issue "Workspace and iommu-model"); until then it says so and fails.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<(), String> {
    Err("walk is not implemented yet".into())
}
