//! What a reconfiguration does with each counter already in the zone.
//!
//! Every configuration load stamps the keys it declares with a new epoch.
//! A key with an older stamp belongs to a server (or upstream) that is gone.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Declared by the configuration being loaded.
    Keep,
    /// Gone and idle: free the entry now.
    Remove,
    /// Gone, but old workers still hold connections to it: keep counting
    /// until they close, then free it.
    Drain,
}

pub fn plan(key_epoch: u32, current_epoch: u32, count: u32) -> Action {
    if key_epoch == current_epoch {
        Action::Keep
    } else if count == 0 {
        Action::Remove
    } else {
        Action::Drain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_keys_are_kept_whatever_their_count() {
        assert_eq!(plan(7, 7, 0), Action::Keep);
        assert_eq!(plan(7, 7, 12), Action::Keep);
    }

    #[test]
    fn gone_keys_are_removed_when_idle_and_drained_when_busy() {
        assert_eq!(plan(6, 7, 0), Action::Remove);
        assert_eq!(plan(6, 7, 3), Action::Drain);
    }
}
