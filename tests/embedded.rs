//! Embedded mode end to end: every stage in one process over the in-memory bus, fed by the
//! generator, stopped by the generator's last event. A clean stop must lose nothing: every
//! generated record reaches normalize, every valid one passes through every stage, and every
//! malformed one is counted on the dead-letter topic. Small topic capacities force the
//! bounded channels to push back on the generator the whole way.

use threatpipe::config::AppConfig;
use threatpipe::stage::StageKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_pipeline_delivers_every_generated_event_through_every_stage() {
    const EVENTS: u64 = 20_000;
    let vars = [
        ("THREATPIPE_GENERATOR__TOTAL", EVENTS.to_string()),
        ("THREATPIPE_GENERATOR__RATE", "0".into()),
        ("THREATPIPE_GENERATOR__MALFORMED_RATIO", "0.01".into()),
        ("THREATPIPE_PIPELINE__MEMORY_TOPIC_CAPACITY", "16".into()),
        ("THREATPIPE_HTTP__ENABLED", "false".into()),
        ("THREATPIPE_PROGRESS__ENABLED", "false".into()),
    ];
    let config = AppConfig::load(None, vars.iter().map(|(k, v)| (k.to_string(), v.clone()))).unwrap();
    let report = tokio::time::timeout(std::time::Duration::from_secs(120), threatpipe::app::run(config, std::future::pending()))
        .await
        .expect("embedded run finished")
        .expect("embedded run succeeded");

    assert_eq!(report.generated, EVENTS);
    assert!(report.malformed_injected > 50, "the generator injected malformed records: {report:?}");
    let valid = EVENTS - report.malformed_injected;
    // Correlate adds one finding event per correlation signal; the generator's attacks
    // complete some chains.
    let correlated = report.stages.iter().find(|s| s.0 == StageKind::Correlate).map(|s| s.2).unwrap();
    assert!(correlated > valid, "correlate added findings: {report:?}");
    for (stage, received, produced, dead) in &report.stages {
        match stage {
            StageKind::Normalize => {
                assert_eq!(*received, EVENTS, "normalize saw every record");
                assert_eq!(*produced, valid, "normalize produced every valid event");
                assert_eq!(*dead, report.malformed_injected, "normalize dead-lettered every malformed record");
            }
            StageKind::QuickScan | StageKind::Correlate => {
                assert_eq!(*received, valid, "{stage} saw every event");
                assert_eq!(*dead, 0);
            }
            StageKind::MlScore => {
                assert_eq!(*received, correlated, "ml-score saw every event and finding");
                assert_eq!(*produced, correlated, "ml-score passed them on");
            }
            StageKind::Alert => assert_eq!(*received, correlated, "alert saw every event and finding"),
            StageKind::Sink => panic!("the sink role does not run in embedded mode"),
        }
    }
    let scanned = report.stages.iter().find(|s| s.0 == StageKind::QuickScan).map(|s| s.2).unwrap();
    assert_eq!(scanned, valid, "quick-scan passed every event on");
    assert_eq!(report.dead_letters, report.malformed_injected, "every dead letter reached the dead-letter topic");
}
