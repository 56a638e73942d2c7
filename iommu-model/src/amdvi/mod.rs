//! AMD-Vi (AMD I/O Virtualization Technology, spec 48882): the device table, host (v1)
//! translation, the command buffer, the event log and the MMIO register file that ties them.

pub mod builder;
pub mod command;
pub mod dte;
pub mod event;
pub mod inject;
pub mod mmio;
pub mod reverse;
pub mod translate;

pub use event::Event;
pub use mmio::AmdVi;
pub use translate::{translate, Outcome};
