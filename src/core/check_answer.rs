//! Placeholder until the answer parser lands (issue 19).

/// A capacity answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub drain: bool,
    pub weight: Option<u32>,
    pub max_conns: Option<u32>,
}
