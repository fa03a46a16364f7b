//! Who gets a new lead: in turn over the binding's users, or always one user. The
//! rotation's position is kept elsewhere (the connector's database, shared by every
//! connector of the binding); this only says whose turn a position is.

use crmessenger_api::policy::{Assignment, AssignmentStrategy};

/// Picks the responsible user for new leads.
#[derive(Debug, Clone)]
pub struct Assigner {
    strategy: AssignmentStrategy,
    fixed: Option<i64>,
    users: Vec<i64>,
}

impl Assigner {
    /// From the policy's `assignment` and the binding's `responsibleUserIds`.
    pub fn new(assignment: &Assignment, users: &[i64]) -> Self {
        Self { strategy: assignment.strategy, fixed: assignment.user_id, users: users.to_vec() }
    }

    /// Whether a new lead takes a turn of the rotation (round-robin over users).
    pub fn rotates(&self) -> bool {
        self.strategy == AssignmentStrategy::RoundRobin && !self.users.is_empty()
    }

    /// The user for a new lead: the fixed user, or the user of rotation position
    /// `turn`; `None` leaves it to the CRM (the integration's user).
    pub fn user(&self, turn: u64) -> Option<i64> {
        match self.strategy {
            AssignmentStrategy::Fixed => self.fixed,
            AssignmentStrategy::RoundRobin if self.users.is_empty() => None,
            AssignmentStrategy::RoundRobin => Some(self.users[(turn % self.users.len() as u64) as usize]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_and_fixed_is_fixed() {
        let rr = Assigner::new(&Assignment::default(), &[1, 2, 3]);
        assert!(rr.rotates());
        let picks: Vec<_> = (0..5).map(|t| rr.user(t)).collect();
        assert_eq!(picks, [Some(1), Some(2), Some(3), Some(1), Some(2)]);
        let fixed = Assigner::new(&Assignment { strategy: AssignmentStrategy::Fixed, user_id: Some(9) }, &[1, 2]);
        assert!(!fixed.rotates());
        assert_eq!((fixed.user(0), fixed.user(7)), (Some(9), Some(9)));
        let nobody = Assigner::new(&Assignment::default(), &[]);
        assert!(!nobody.rotates());
        assert_eq!(nobody.user(0), None);
    }
}
