//! Known-threat search on a Qdrant server: the [`ThreatIndex`] for exemplar sets too large
//! for the embedded exact index (docker-compose and Kubernetes deployments run Qdrant).
//!
//! At start the exemplars are embedded and upserted into a collection (created with
//! [`DIM`]-dimensional cosine vectors if missing; point ids are the exemplar's position, its
//! id, kind and title are the payload). Queries come from the synchronous stage core, so
//! they go to a dedicated thread running the async client and wait at most
//! [`QUERY_TIMEOUT`]: a slow or unreachable server costs the similarity part of one event,
//! never a stalled stage (counted in `threatpipe_similarity_errors_total`).

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

use qdrant_client::qdrant::{
    Condition, CreateCollectionBuilder, Distance, Filter, PointStruct, SearchPointsBuilder, UpsertPointsBuilder, VectorParamsBuilder,
};
use qdrant_client::Qdrant;

use super::similarity::{embed, Exemplar, Nearest, TextKind, ThreatIndex, DIM};
use crate::telemetry::names;

/// Longest a query may take before the event is scored without similarity.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Queries waiting for the search thread; beyond it a query is skipped (counted).
const QUEUE: usize = 1024;

type Reply = mpsc::SyncSender<Option<Nearest>>;

pub struct QdrantIndex {
    queries: mpsc::SyncSender<(TextKind, Vec<f32>, Reply)>,
    len: usize,
}

fn kind_of(name: &str) -> Option<TextKind> {
    match name {
        "command" => Some(TextKind::Command),
        "url" => Some(TextKind::Url),
        "prompt" => Some(TextKind::Prompt),
        _ => None,
    }
}

impl QdrantIndex {
    /// Connects to `url` (gRPC, e.g. `http://127.0.0.1:6334`), makes sure `collection`
    /// holds `exemplars`, and starts the search thread. Fails when the server cannot be
    /// reached or refuses the collection.
    pub fn connect(url: &str, collection: &str, exemplars: Vec<Exemplar>) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let client = Qdrant::from_url(url).timeout(QUERY_TIMEOUT).connect_timeout(CONNECT_TIMEOUT).build().map_err(|e| e.to_string())?;
        let len = exemplars.len();
        runtime.block_on(async {
            let exists = client.collection_exists(collection).await.map_err(|e| format!("qdrant {url}: {e}"))?;
            if !exists {
                client
                    .create_collection(CreateCollectionBuilder::new(collection).vectors_config(VectorParamsBuilder::new(DIM as u64, Distance::Cosine)))
                    .await
                    .map_err(|e| format!("qdrant {url}: creating {collection}: {e}"))?;
            }
            let points: Vec<PointStruct> = exemplars
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let payload: HashMap<&str, qdrant_client::qdrant::Value> =
                        [("id", e.id.clone().into()), ("kind", e.kind.as_str().to_string().into()), ("title", e.title.clone().into())].into_iter().collect();
                    PointStruct::new(i as u64, embed(&e.text), payload)
                })
                .collect();
            if !points.is_empty() {
                client.upsert_points(UpsertPointsBuilder::new(collection, points).wait(true)).await.map_err(|e| format!("qdrant {url}: upserting exemplars: {e}"))?;
            }
            Ok::<(), String>(())
        })?;
        let (queries, inbox) = mpsc::sync_channel::<(TextKind, Vec<f32>, Reply)>(QUEUE);
        let collection = collection.to_string();
        std::thread::Builder::new()
            .name("qdrant-search".into())
            .spawn(move || {
                while let Ok((kind, vector, reply)) = inbox.recv() {
                    let search = SearchPointsBuilder::new(&collection, vector, 1)
                        .filter(Filter::must([Condition::matches("kind", kind.as_str().to_string())]))
                        .with_payload(true);
                    let nearest = match runtime.block_on(client.search_points(search)) {
                        Ok(response) => response.result.into_iter().next().and_then(|point| {
                            let text = |k: &str| match point.payload.get(k).and_then(|v| v.kind.as_ref()) {
                                Some(qdrant_client::qdrant::value::Kind::StringValue(s)) => Some(s.clone()),
                                _ => None,
                            };
                            Some(Nearest { id: text("id")?, title: text("title").unwrap_or_default(), kind: kind_of(&text("kind")?)?, similarity: point.score })
                        }),
                        Err(error) => {
                            tracing::debug!(%error, "qdrant search failed");
                            metrics::counter!(names::SIMILARITY_ERRORS, "reason" => "search").increment(1);
                            None
                        }
                    };
                    // The asker may have given up (timeout); that is fine.
                    let _ = reply.try_send(nearest);
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Self { queries, len })
    }
}

impl ThreatIndex for QdrantIndex {
    fn nearest(&self, kind: TextKind, vector: &[f32]) -> Option<Nearest> {
        let (reply, answer) = mpsc::sync_channel(1);
        if self.queries.try_send((kind, vector.to_vec(), reply)).is_err() {
            metrics::counter!(names::SIMILARITY_ERRORS, "reason" => "queue_full").increment(1);
            return None;
        }
        match answer.recv_timeout(QUERY_TIMEOUT) {
            Ok(nearest) => nearest,
            Err(_) => {
                metrics::counter!(names::SIMILARITY_ERRORS, "reason" => "timeout").increment(1);
                None
            }
        }
    }

    fn len(&self) -> usize {
        self.len
    }
}
