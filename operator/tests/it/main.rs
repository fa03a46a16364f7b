//! The operator against a real control plane (with controller-manager, scheduler
//! and kwok), one for every module of this binary, with one operator process and
//! a namespace per test. The chart and leader-election tests are separate
//! binaries: they run operators of their own (the chart's, with its RBAC; two
//! electing a leader), and two operators on one control plane would act on the
//! same objects.

mod accounts;
mod admission;
mod bindings;
mod common;
mod plugin;
