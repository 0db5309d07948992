//! A sharded run through `run::execute`: three shards of one scenario run
//! side by side in one process (each against its own in-process emulator),
//! together simulate exactly the fleet with no device twice, and their
//! reports merge into the fleet's report with summed counts and the
//! percentiles of every shard's samples together.

use std::collections::BTreeSet;
use std::path::Path;

use fleetsim::fleet::Shard;
use fleetsim::observe::merge::{NamedReport, ShardInfo, merge};
use fleetsim::observe::{Op, Report};
use fleetsim::run::{RunOptions, RunSummary, execute};
use fleetsim::scenario::Scenario;
use tokio_util::sync::CancellationToken;

const SHARDS: u32 = 3;
const FLEET: u64 = 14;

fn scenario(dir: &Path) -> Scenario {
    let yaml = format!(
        r#"
name: sharded
fleet:
  size: {FLEET}
  serial_pattern: "sh-{{seq:03}}"
arrival:
  rate: 20/s
clock:
  speedup: 86400
certificates:
  validity: 30d
rotation:
  enabled: false
telemetry:
  interval: 500ms
run:
  duration: 3s
credentials:
  storage: disk
  dir: "{}"
slo:
  max_failure_ratio: 0
"#,
        dir.display()
    );
    Scenario::parse(&yaml, Path::new("sharded.yaml")).expect("the test scenario is valid")
}

async fn run_shard(scenario: &Scenario, index: u32) -> RunSummary {
    let options = RunOptions {
        shard: Shard::new(index, SHARDS).unwrap(),
        ..RunOptions::default()
    };
    execute(scenario, &options, CancellationToken::new())
        .await
        .expect("the shard's run starts")
}

fn serials(summary: &RunSummary) -> BTreeSet<String> {
    summary.outcomes.iter().map(|o| o.serial.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_simulate_the_fleet_once_and_their_reports_merge_to_the_sums() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = scenario(dir.path());
    let (a, b, c) = tokio::join!(
        run_shard(&scenario, 0),
        run_shard(&scenario, 1),
        run_shard(&scenario, 2)
    );
    let shards = [a, b, c];

    let mut union = BTreeSet::new();
    for (index, shard) in shards.iter().enumerate() {
        let owned = serials(shard);
        let expected: BTreeSet<String> = (0..FLEET)
            .filter(|k| k % u64::from(SHARDS) == index as u64)
            .map(|k| format!("sh-{k:03}"))
            .collect();
        assert_eq!(owned, expected, "shard {index} owns every third device");
        assert!(union.is_disjoint(&owned), "no device in two shards");
        union.extend(owned);

        let emulator = shard.emulator.as_ref().unwrap();
        let things: BTreeSet<String> = emulator
            .registry()
            .things()
            .into_iter()
            .map(|t| t.name)
            .collect();
        let provisioned: BTreeSet<String> =
            expected.iter().map(|s| format!("fleetsim-{s}")).collect();
        assert_eq!(
            things, provisioned,
            "shard {index} provisioned only its devices, each once"
        );

        let report = &shard.report;
        assert_eq!(report.devices, expected.len() as u64);
        assert_eq!(
            report.shard,
            Some(ShardInfo {
                index: index as u32,
                count: SHARDS,
                fleet_devices: FLEET
            })
        );
        let folder = dir
            .path()
            .join("sharded")
            .join(format!("shard-{index}-of-{SHARDS}"));
        assert!(folder.is_dir(), "each shard keeps its credentials apart");
    }
    let whole: BTreeSet<String> = (0..FLEET).map(|k| format!("sh-{k:03}")).collect();
    assert_eq!(union, whole, "the shards together are the fleet");

    let named: Vec<NamedReport> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| NamedReport {
            name: format!("shard {i}"),
            report: roundtrip(&s.report),
        })
        .collect();
    let merged = merge(&named).expect("a complete set of shards merges");
    let reports: Vec<&Report> = shards.iter().map(|s| &s.report).collect();
    assert_sums(&merged, &reports);
    assert!(merged.passed(), "{}", merged.render_table());
}

/// The merge reads reports as they come out of their JSON files.
fn roundtrip(report: &Report) -> Report {
    Report::from_json(&report.to_json_pretty().unwrap()).unwrap()
}

fn assert_sums(merged: &Report, shards: &[&Report]) {
    let sum = |field: fn(&Report) -> u64| shards.iter().map(|r| field(r)).sum::<u64>();
    assert_eq!(merged.devices, FLEET);
    assert_eq!(merged.provisioned, sum(|r| r.provisioned));
    assert_eq!(merged.provisioned, FLEET);
    assert_eq!(merged.devices_failed, sum(|r| r.devices_failed));
    assert_eq!(merged.bricked, sum(|r| r.bricked));
    for op in Op::ALL {
        let of = |r: &Report| r.operation(op).unwrap().clone();
        let merged_op = of(merged);
        assert_eq!(
            merged_op.count,
            shards.iter().map(|r| of(r).count).sum::<u64>(),
            "{op:?}"
        );
        assert_eq!(
            merged_op.failures,
            shards.iter().map(|r| of(r).failures).sum::<u64>()
        );
        let mut combined = of(shards[0]).histogram().unwrap();
        for shard in &shards[1..] {
            combined.add(of(shard).histogram().unwrap()).unwrap();
        }
        assert_eq!(merged_op.histogram().unwrap(), combined, "{op:?} samples");
        let p99 = (!combined.is_empty())
            .then(|| (combined.value_at_quantile(0.99) as f64 / 1000.0 * 1000.0).round() / 1000.0);
        assert_eq!(merged_op.p99_ms, p99, "{op:?} p99 of the combined samples");
    }
    assert!(merged.operation(Op::Provision).unwrap().count == FLEET);
}
