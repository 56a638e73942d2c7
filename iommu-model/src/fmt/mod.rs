//! Page-table entry formats. Each file describes the entries of one format and nothing else; the
//! walk is [`crate::walk`].

pub mod amdv1;
pub mod vtd_ss;
