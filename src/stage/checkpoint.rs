//! Where stateful stages keep their per-partition state between owners.
//!
//! A partition of a stage's input belongs to one instance at a time; when it moves (restart,
//! crash, rebalance) its state must move with it, or a brute force half-seen by the old
//! owner is never completed by the new one, and a baseline learnt for weeks is forgotten.
//! Each partition's state ([`Checkpointed`]) is a Redis hash:
//!
//! ```text
//! {prefix}:{topic}:{partition}   __meta → the state's metadata (layout version, applied offset, …)
//!                                <key>  → one entry as JSON (a correlation window, a baseline)
//! ```
//!
//! A checkpoint writes only the windows changed since the previous one, plus the metadata, in
//! one MULTI/EXEC, so a reader never sees a half-written checkpoint. The runner commits input
//! offsets only up to `applied_offset + 1` of the last successful write, so a restored state
//! and the committed offset always agree.
//!
//! `memory` keeps nothing outside the process: right for the embedded pipeline (whose input
//! dies with the process anyway), wrong for a Kafka deployment, which is why that default is
//! Redis.

use std::collections::HashMap;
use std::time::Duration;

use crate::state::{Checkpointed, TrackedMap};

/// Field of the partition hash that holds [`StateMeta`].
const META_FIELD: &str = "__meta";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint store {url}: {detail}")]
    Store { url: String, detail: String },
    #[error("checkpoint {key}: unreadable metadata ({detail})")]
    Corrupt { key: String, detail: String },
}

/// A restored partition state and what had to be skipped on the way.
pub struct Restored<S> {
    pub state: S,
    /// Entries whose JSON did not parse (dropped, counted).
    pub unreadable_entries: usize,
}

pub enum CheckpointStore {
    /// Nothing leaves the process.
    Memory,
    Redis(Box<RedisCheckpoints>),
}

impl CheckpointStore {
    /// `memory` or a `redis://` / `rediss://` URL.
    pub fn open(spec: &str, prefix: &str) -> Result<Self, CheckpointError> {
        if spec == "memory" {
            return Ok(Self::Memory);
        }
        let client = redis::Client::open(spec).map_err(|e| CheckpointError::Store { url: spec.into(), detail: e.to_string() })?;
        Ok(Self::Redis(Box::new(RedisCheckpoints { url: spec.into(), client, connection: None, prefix: prefix.into() })))
    }

    pub fn is_durable(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    /// The checkpoint of one partition, or `None` when there is none.
    pub fn load<S: Checkpointed>(&mut self, topic: &str, partition: i32) -> Result<Option<Restored<S>>, CheckpointError> {
        match self {
            Self::Memory => Ok(None),
            Self::Redis(redis) => redis.load(topic, partition),
        }
    }

    /// Writes what changed in `state` since its last checkpoint. On failure the changes stay
    /// queued in `state` for the next attempt.
    pub fn save<S: Checkpointed>(&mut self, topic: &str, partition: i32, state: &mut S) -> Result<usize, CheckpointError> {
        match self {
            Self::Memory => {
                // Nothing to write; keep the change sets from growing.
                state.entries_mut().take_changes();
                Ok(0)
            }
            Self::Redis(redis) => redis.save(topic, partition, state),
        }
    }
}

pub struct RedisCheckpoints {
    url: String,
    client: redis::Client,
    connection: Option<redis::Connection>,
    prefix: String,
}

impl RedisCheckpoints {
    fn key(&self, topic: &str, partition: i32) -> String {
        format!("{}:{topic}:{partition}", self.prefix)
    }

    fn store_error(&self, e: impl std::fmt::Display) -> CheckpointError {
        CheckpointError::Store { url: self.url.clone(), detail: e.to_string() }
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, CheckpointError> {
        if self.connection.is_none() {
            let connection = self.client.get_connection_with_timeout(CONNECT_TIMEOUT).map_err(|e| self.store_error(e))?;
            connection.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| self.store_error(e))?;
            connection.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| self.store_error(e))?;
            self.connection = Some(connection);
        }
        self.connection.as_mut().ok_or_else(|| CheckpointError::Store { url: String::new(), detail: "no connection".into() })
    }

    /// Runs `f` on the connection; a failed call drops the connection so the next one
    /// reconnects.
    fn with_connection<T>(&mut self, f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>) -> Result<T, CheckpointError> {
        let result = f(self.connection()?);
        result.map_err(|e| {
            self.connection = None;
            self.store_error(e)
        })
    }

    fn load<S: Checkpointed>(&mut self, topic: &str, partition: i32) -> Result<Option<Restored<S>>, CheckpointError> {
        let key = self.key(topic, partition);
        let mut fields: HashMap<String, String> = self.with_connection(|c| redis::cmd("HGETALL").arg(&key).query(c))?;
        let Some(meta) = fields.remove(META_FIELD) else {
            return Ok(None);
        };
        let meta: S::Meta = serde_json::from_str(&meta).map_err(|e| CheckpointError::Corrupt { key: key.clone(), detail: e.to_string() })?;
        if S::meta_version(&meta) != S::VERSION {
            let detail = format!("layout version {} (this build reads {})", S::meta_version(&meta), S::VERSION);
            return Err(CheckpointError::Corrupt { key, detail });
        }
        let mut unreadable_entries = 0;
        let entries: Vec<(String, S::Entry)> = fields
            .into_iter()
            .filter_map(|(k, v)| match serde_json::from_str(&v) {
                Ok(entry) => Some((k, entry)),
                Err(_) => {
                    unreadable_entries += 1;
                    None
                }
            })
            .collect();
        Ok(Some(Restored { state: S::restore(meta, TrackedMap::from_entries(entries)), unreadable_entries }))
    }

    fn save<S: Checkpointed>(&mut self, topic: &str, partition: i32, state: &mut S) -> Result<usize, CheckpointError> {
        let key = self.key(topic, partition);
        let (dirty, removed) = state.entries_mut().take_changes();
        let meta = serde_json::to_string(&state.meta()).map_err(|e| self.store_error(e))?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("HSET").arg(&key).arg(META_FIELD).arg(meta).ignore();
        for chunk in dirty.chunks(512) {
            let mut hset = redis::cmd("HSET");
            hset.arg(&key);
            for field in chunk {
                if let Some(entry) = state.entries().get(field) {
                    let json = serde_json::to_string(entry).map_err(|e| self.store_error(e))?;
                    hset.arg(field).arg(json);
                }
            }
            pipe.add_command(hset).ignore();
        }
        for chunk in removed.chunks(512) {
            pipe.cmd("HDEL").arg(&key).arg(chunk).ignore();
        }
        let written = dirty.len() + removed.len();
        match self.with_connection(|c| pipe.query::<()>(c)) {
            Ok(()) => Ok(written),
            Err(e) => {
                state.entries_mut().requeue(dirty, removed);
                Err(e)
            }
        }
    }
}
