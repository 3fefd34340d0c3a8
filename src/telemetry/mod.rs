//! Counters the pipeline keeps, shown on the terminal and exported to Prometheus.
//!
//! Hot loops bump plain atomics in [`StageStats`] (one relaxed add per record); the
//! Prometheus view is refreshed from them when `/metrics` is scraped and on the progress
//! tick, so no label lookup ever happens per record. Labels are a fixed set (`stage`,
//! `topic`): never user-supplied values.

pub mod names;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::stage::StageKind;

/// Lifecycle of a stage task, for `/health` and `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StageState {
    Starting = 0,
    Running = 1,
    Stopped = 2,
    Failed = 3,
}

impl StageState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug)]
pub struct StageStats {
    pub stage: StageKind,
    pub received: AtomicU64,
    pub produced: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub commits: AtomicU64,
    pub in_flight: AtomicU64,
    /// Records behind the end of the input topic; -1 unknown (in-process bus, no report yet).
    pub lag: std::sync::atomic::AtomicI64,
    state: AtomicU8,
}

impl StageStats {
    pub fn new(stage: StageKind) -> Arc<Self> {
        Arc::new(Self {
            stage,
            received: AtomicU64::new(0),
            produced: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            lag: std::sync::atomic::AtomicI64::new(-1),
            state: AtomicU8::new(StageState::Starting as u8),
        })
    }

    pub fn set_state(&self, state: StageState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> StageState {
        match self.state.load(Ordering::Relaxed) {
            0 => StageState::Starting,
            1 => StageState::Running,
            2 => StageState::Stopped,
            _ => StageState::Failed,
        }
    }
}

/// Counts for the generator and for topics nobody in this process consumes.
#[derive(Debug, Default)]
pub struct FlowStats {
    pub generated: AtomicU64,
    pub attacks_injected: AtomicU64,
    pub malformed_injected: AtomicU64,
    pub alerts: AtomicU64,
    pub dead_letters: AtomicU64,
}

/// Everything the process counts.
#[derive(Debug, Default, Clone)]
pub struct Telemetry {
    pub stages: Vec<Arc<StageStats>>,
    pub flow: Arc<FlowStats>,
}

impl Telemetry {
    /// Copies the atomics into the Prometheus recorder.
    pub fn publish(&self) {
        for s in &self.stages {
            let stage = s.stage.as_str();
            metrics::counter!(names::STAGE_RECORDS_IN, "stage" => stage).absolute(s.received.load(Ordering::Relaxed));
            metrics::counter!(names::STAGE_RECORDS_OUT, "stage" => stage).absolute(s.produced.load(Ordering::Relaxed));
            metrics::counter!(names::STAGE_DEAD_LETTERED, "stage" => stage).absolute(s.dead_lettered.load(Ordering::Relaxed));
            metrics::counter!(names::STAGE_COMMITS, "stage" => stage).absolute(s.commits.load(Ordering::Relaxed));
            metrics::gauge!(names::STAGE_IN_FLIGHT, "stage" => stage).set(s.in_flight.load(Ordering::Relaxed) as f64);
            metrics::gauge!(names::STAGE_UP, "stage" => stage).set(if s.state() == StageState::Running { 1.0 } else { 0.0 });
            let lag = s.lag.load(Ordering::Relaxed);
            if lag >= 0 {
                metrics::gauge!(names::STAGE_LAG, "stage" => stage).set(lag as f64);
            }
        }
        let f = &self.flow;
        metrics::counter!(names::GENERATOR_EVENTS).absolute(f.generated.load(Ordering::Relaxed));
        metrics::counter!(names::GENERATOR_ATTACKS).absolute(f.attacks_injected.load(Ordering::Relaxed));
        metrics::counter!(names::ALERTS_SEEN).absolute(f.alerts.load(Ordering::Relaxed));
        metrics::counter!(names::DEAD_LETTERS_SEEN).absolute(f.dead_letters.load(Ordering::Relaxed));
    }
}
