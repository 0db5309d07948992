//! The command line's shard flags: a bad `--shard` or a missing
//! `JOB_COMPLETION_INDEX` stops `fleetsim run` with exit code 2 and says
//! why, before anything starts.

use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_fleetsim");

fn run_quickstart(args: &[&str], index: Option<&str>) -> Output {
    let mut command = Command::new(BINARY);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "scenarios/quickstart.yaml", "--no-metrics"])
        .args(args)
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("FLEETSIM_SHARDS");
    if let Some(index) = index {
        command.env("JOB_COMPLETION_INDEX", index);
    }
    command.output().expect("the binary runs")
}

fn refused_with(out: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(message), "{stderr}");
}

#[test]
fn a_shard_index_at_the_shard_count_is_refused_with_exit_code_2() {
    let out = run_quickstart(&["--shard", "3/3"], None);
    refused_with(
        &out,
        "shard index 3 is out of range: it must be below the shard count 3",
    );
}

#[test]
fn a_malformed_shard_or_zero_shards_is_refused_with_exit_code_2() {
    refused_with(
        &run_quickstart(&["--shard", "1"], None),
        "is not of the form I/N",
    );
    refused_with(
        &run_quickstart(&["--shard", "0/0"], None),
        "shard count must be at least 1",
    );
}

#[test]
fn shards_without_a_job_completion_index_is_refused_with_exit_code_2() {
    let out = run_quickstart(&["--shards", "4"], None);
    refused_with(&out, "JOB_COMPLETION_INDEX is not set");
    let out = run_quickstart(&["--shards", "4"], Some("two"));
    refused_with(&out, "JOB_COMPLETION_INDEX=`two` is not a shard index");
}

#[test]
fn shard_and_shards_together_are_refused() {
    let out = run_quickstart(&["--shard", "0/2", "--shards", "2"], Some("0"));
    refused_with(&out, "cannot be used with");
}
