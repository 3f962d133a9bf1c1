//! The side-by-side benchmark (`scripts/bench_vs_fluentbit.py`) is only worth its figures if
//! its output check refuses lost, duplicated or altered records. Its own unit tests
//! (`scripts/bench_vs_fluentbit_test.py`, standard library only: no moto, no router) run here
//! so that CI keeps them green.

mod common;

#[test]
fn the_benchmark_output_check_refuses_lost_and_garbled_records() {
    let python = std::env::var("FIRELANE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");
    let out = match std::process::Command::new(&python)
        .args(["-m", "unittest", "-v", "bench_vs_fluentbit_test"])
        .current_dir(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            common::peer_missing(&format!("cannot run {python}: {e}"));
            return;
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // unittest prints "Ran N tests"; a file that loses its tests must not pass by running none.
    let ran: usize = err
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(ran >= 13, "only {ran} harness tests ran:\n{err}");
}
