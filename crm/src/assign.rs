//! Who gets a new lead: in turn over the binding's users, or always one user,
//! among the users still active in the CRM, with the binding's fallback user when
//! none of them is. The rotation's position is kept elsewhere (the connector's
//! database, shared by every connector of the binding); this only says whose turn
//! a position is.

use crmessenger_api::policy::{Assignment, AssignmentStrategy};

/// Picks the responsible user of new leads.
#[derive(Debug, Clone)]
pub struct Assigner {
    strategy: AssignmentStrategy,
    fixed: Option<i64>,
    users: Vec<i64>,
    fallback: Option<i64>,
}

impl Assigner {
    /// From the policy's `assignment` and the binding's `responsibleUserIds` and
    /// `fallbackUserId`.
    pub fn new(assignment: &Assignment, users: &[i64], fallback: Option<i64>) -> Self {
        Self { strategy: assignment.strategy, fixed: assignment.user_id, users: users.to_vec(), fallback }
    }

    /// Whether a new lead takes a turn of the rotation (round-robin over users).
    pub fn rotates(&self) -> bool {
        self.strategy == AssignmentStrategy::RoundRobin && !self.users.is_empty()
    }

    /// The user for a new lead: the fixed user, or turn `turn` of the rotation
    /// over the users in `active` (every user when the CRM's list is unknown);
    /// the fallback user (when active) if none of them is; `None` leaves it to the
    /// CRM (the integration's user).
    pub fn user(&self, turn: u64, active: Option<&[i64]>) -> Option<i64> {
        let is_active = |u: &i64| active.is_none_or(|a| a.contains(u));
        let chosen = match self.strategy {
            AssignmentStrategy::Fixed => self.fixed.filter(is_active),
            AssignmentStrategy::RoundRobin => {
                let on_duty: Vec<i64> = self.users.iter().copied().filter(is_active).collect();
                (!on_duty.is_empty()).then(|| on_duty[(turn % on_duty.len() as u64) as usize])
            }
        };
        chosen.or(self.fallback.filter(is_active))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_and_fixed_is_fixed() {
        let rr = Assigner::new(&Assignment::default(), &[1, 2, 3], None);
        assert!(rr.rotates());
        let picks: Vec<_> = (0..5).map(|t| rr.user(t, None)).collect();
        assert_eq!(picks, [Some(1), Some(2), Some(3), Some(1), Some(2)]);
        let fixed = Assigner::new(&Assignment { strategy: AssignmentStrategy::Fixed, user_id: Some(9) }, &[1, 2], None);
        assert!(!fixed.rotates());
        assert_eq!((fixed.user(0, None), fixed.user(7, None)), (Some(9), Some(9)));
        let nobody = Assigner::new(&Assignment::default(), &[], None);
        assert!(!nobody.rotates());
        assert_eq!(nobody.user(0, None), None);
    }

    #[test]
    fn deactivated_users_are_skipped_and_the_fallback_takes_over() {
        let rr = Assigner::new(&Assignment::default(), &[1, 2, 3], Some(7));
        // User 2 deactivated: the rotation goes on among 1 and 3, evenly.
        let picks: Vec<_> = (0..4).map(|t| rr.user(t, Some(&[1, 3, 7]))).collect();
        assert_eq!(picks, [Some(1), Some(3), Some(1), Some(3)]);
        // Nobody of the rotation active: the fallback; it too gone: the CRM decides.
        assert_eq!(rr.user(0, Some(&[7])), Some(7));
        assert_eq!(rr.user(0, Some(&[])), None);
        let fixed = Assigner::new(&Assignment { strategy: AssignmentStrategy::Fixed, user_id: Some(9) }, &[], Some(7));
        assert_eq!(fixed.user(0, Some(&[7, 9])), Some(9));
        assert_eq!(fixed.user(0, Some(&[7])), Some(7));
    }
}
