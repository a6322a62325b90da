//! Learning-rate schedules as transformers defines them (`get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup`, `get_constant_schedule_with_warmup`).
//!
//! [`Schedule::lr`]`(k)` is the learning rate of optimizer step `k` (0-based): the first step
//! of a warm-up runs at 0, as in transformers, where the scheduler's factor at step 0 is
//! `0 / warmup`.

use crate::TrainError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    /// Warm-up, then linear decay to 0 at `total_steps`.
    Linear,
    /// Warm-up, then half a cosine down to 0 at `total_steps`.
    Cosine,
    /// Warm-up, then constant.
    Constant,
}

impl ScheduleKind {
    pub fn parse(name: &str) -> Result<ScheduleKind, TrainError> {
        match name {
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            "constant" | "constant_with_warmup" => Ok(ScheduleKind::Constant),
            other => Err(TrainError::Config(format!(
                "unknown learning-rate schedule \"{other}\" (supported: linear, cosine, constant)"
            ))),
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::Constant => "constant",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// The multiplier of the base rate at step `k` (transformers' `lr_lambda`).
    pub fn factor(&self, k: usize) -> f64 {
        let (w, total) = (self.warmup_steps, self.total_steps);
        if k < w {
            return k as f64 / w.max(1) as f64;
        }
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => (total.saturating_sub(k) as f64 / total.saturating_sub(w).max(1) as f64).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (k - w) as f64 / total.saturating_sub(w).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }

    /// The learning rate of step `k` (0-based).
    pub fn lr(&self, k: usize) -> f64 {
        self.base_lr * self.factor(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_with_warmup_matches_transformers() {
        // transformers: lr_lambda(k) = k/5 for k < 5, else (75-k)/70.
        let s = Schedule { kind: ScheduleKind::Linear, base_lr: 2e-4, warmup_steps: 5, total_steps: 75 };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(1) - 2e-4 / 5.0).abs() < 1e-18);
        assert!((s.lr(5) - 2e-4).abs() < 1e-18);
        assert!((s.lr(40) - 2e-4 * 35.0 / 70.0).abs() < 1e-18);
        assert_eq!(s.lr(75), 0.0);
        assert_eq!(s.lr(80), 0.0);
    }

    #[test]
    fn cosine_and_constant() {
        let c = Schedule { kind: ScheduleKind::Cosine, base_lr: 1.0, warmup_steps: 2, total_steps: 12 };
        assert_eq!(c.lr(1), 0.5);
        assert!((c.lr(2) - 1.0).abs() < 1e-12);
        assert!((c.lr(7) - 0.5).abs() < 1e-12);
        assert!(c.lr(12).abs() < 1e-12);
        let k = Schedule { kind: ScheduleKind::Constant, base_lr: 3.0, warmup_steps: 0, total_steps: 10 };
        assert_eq!(k.lr(0), 3.0);
        assert_eq!(k.lr(9), 3.0);
    }
}
