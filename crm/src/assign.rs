//! Who gets a new lead: in turn over the binding's users, or always one user.

use crmessenger_api::policy::{Assignment, AssignmentStrategy};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Picks the responsible user for new leads.
#[derive(Debug)]
pub struct Assigner {
    strategy: AssignmentStrategy,
    fixed: Option<i64>,
    users: Vec<i64>,
    next: AtomicUsize,
}

impl Assigner {
    /// From the policy's `assignment` and the binding's `responsibleUserIds`.
    /// `start` continues a rotation persisted elsewhere.
    pub fn new(assignment: &Assignment, users: &[i64], start: usize) -> Self {
        Self {
            strategy: assignment.strategy,
            fixed: assignment.user_id,
            users: users.to_vec(),
            next: AtomicUsize::new(start),
        }
    }

    /// The user for the next new lead; `None` leaves it to the CRM (the integration's user).
    pub fn next(&self) -> Option<i64> {
        match self.strategy {
            AssignmentStrategy::Fixed => self.fixed,
            AssignmentStrategy::RoundRobin if self.users.is_empty() => None,
            AssignmentStrategy::RoundRobin => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                Some(self.users[i % self.users.len()])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_and_fixed_is_fixed() {
        let rr = Assigner::new(&Assignment::default(), &[1, 2, 3], 0);
        let picks: Vec<_> = (0..5).map(|_| rr.next()).collect();
        assert_eq!(picks, [Some(1), Some(2), Some(3), Some(1), Some(2)]);
        let fixed = Assigner::new(&Assignment { strategy: AssignmentStrategy::Fixed, user_id: Some(9) }, &[1, 2], 0);
        assert_eq!((fixed.next(), fixed.next()), (Some(9), Some(9)));
        assert_eq!(Assigner::new(&Assignment::default(), &[], 0).next(), None);
    }
}
