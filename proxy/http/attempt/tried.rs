//! The backends a request has been sent to, so that a retry goes elsewhere. Almost every
//! request makes one try: the first few are held inline, with no allocation.

use crate::routing::BackendRef;

const INLINE: usize = 4;

#[derive(Debug, Default)]
pub(crate) struct Tried {
    inline: [Option<BackendRef>; INLINE],
    more: Vec<BackendRef>,
}

impl Tried {
    pub(crate) fn add(&mut self, b: BackendRef) {
        match self.inline.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(b),
            None => self.more.push(b),
        }
    }

    pub(crate) fn contains(&self, target: usize, index: usize) -> bool {
        let b = BackendRef::new(target, index);
        self.inline.contains(&Some(b)) || self.more.contains(&b)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.inline[0].is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_any_number_of_backends() {
        let mut t = Tried::default();
        assert!(t.is_empty());
        for i in 0..10 {
            t.add(BackendRef::new(i % 2, i));
        }
        assert!(!t.is_empty());
        assert!((0..10).all(|i| t.contains(i % 2, i)));
        assert!(!t.contains(1, 0));
    }
}
