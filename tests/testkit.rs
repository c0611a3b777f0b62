//! The test kit starts private servers and leaves no process behind, panics included.

use std::process::Command;
use std::time::{Duration, Instant};

fn alive(pid: u32) -> bool {
    // A zombie is reaped by its parent shortly; count it as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

/// Runs the probe below in a child process of this test binary.
fn run_probe() -> std::process::Output {
    let exe = std::env::current_exe().expect("current exe");
    Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "probe_starts_servers_then_panics",
            "--nocapture",
        ])
        .output()
        .expect("run probe")
}

/// Runs in a child process (see below): starts both servers, prints their pids, panics.
#[test]
#[ignore = "helper: run by servers_stop_when_the_process_panics in a child process"]
fn probe_starts_servers_then_panics() {
    tabula::testkit::postgres_url().expect("postgres");
    tabula::testkit::redis_url().expect("redis");
    let pg = tabula::testkit::postgres_server()
        .map(|s| s.pid)
        .unwrap_or(0);
    let redis = tabula::testkit::redis_pid().unwrap_or(0);
    let port = tabula::testkit::postgres_server()
        .map(|s| s.port)
        .unwrap_or(0);
    println!("PIDS {pg} {redis}");
    println!("PORT {port}");
    panic!("the probe panics on purpose");
}

#[test]
fn servers_stop_when_the_process_panics() {
    if std::env::var("DATABASE_URL").is_ok() || std::env::var("REDIS_URL").is_ok() {
        eprintln!("external servers configured; the kit starts none, nothing to check");
        return;
    }
    let out = run_probe();
    assert!(!out.status.success(), "the probe panicked");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("PIDS "))
        .unwrap_or_else(|| {
            panic!(
                "probe printed no pids:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let pids: Vec<u32> = line[5..]
        .split(' ')
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(pids.len(), 2);
    assert!(
        pids.iter().all(|p| *p > 0),
        "both servers were started: {pids:?}"
    );
    let started = Instant::now();
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "servers {pids:?} still running after the probe exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_kits_in_one_machine_get_different_ports() {
    if std::env::var("DATABASE_URL").is_ok() {
        return;
    }
    let mine = tabula::testkit::postgres_url().expect("postgres");
    let out = run_probe();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let their_port = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PORT "))
        .unwrap_or_else(|| panic!("second kit did not start while the first runs:\n{stdout}"));
    let my_port = mine
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .unwrap_or_default();
    assert_ne!(my_port, their_port, "each process has its own server");
    let pid = tabula::testkit::postgres_server()
        .map(|s| s.pid)
        .expect("my server");
    assert!(alive(pid), "my server survived the other kit's exit");
}
