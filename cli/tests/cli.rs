//! The CLI as a newcomer meets it (issue 30): connection flags only where a
//! scheduler is talked to, gRPC's own code names and RFC 3339 times in errors,
//! one line naming the address when no scheduler answers, completions and a
//! manual page.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::Proc;

fn greenfill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_greenfill")).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn connection_flags_are_on_the_commands_that_talk_to_a_scheduler_and_no_others() {
    let offline: [&[&str]; 7] = [
        &["--help"],
        &["sim", "run", "--help"],
        &["sim", "replay", "--help"],
        &["data", "inspect", "--help"],
        &["data", "import", "prometheus", "--help"],
        &["forecast", "--help"],
        &["carbon", "fetch", "--help"],
    ];
    for args in offline {
        let help = stdout(&greenfill(args));
        for flag in ["--server", "--token", "--client-config", "--ca-cert"] {
            let listed = help.contains(&format!("{flag} <"));
            assert!(!listed, "`greenfill {}` lists {flag}:\n{help}", args.join(" "));
        }
    }
    let online: [&[&str]; 8] = [
        &["submit", "--help"],
        &["jobs", "--help"],
        &["jobs", "export", "--help"],
        &["cancel", "--help"],
        &["plan", "--help"],
        &["nodes", "--help"],
        &["audit", "--help"],
        &["ledger", "--help"],
    ];
    for args in online {
        let help = stdout(&greenfill(args));
        assert!(help.contains("Scheduler:") && help.contains("--server <SERVER>"), "{args:?}:\n{help}");
    }
}

#[test]
fn an_unreachable_scheduler_is_one_line_naming_the_address_and_how_to_start_one() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = format!("http://127.0.0.1:{port}");
    let o = greenfill(&["jobs", "--server", &server]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.ends_with('\n'), "{err:?}");
    assert!(err.contains(&format!("cannot reach the scheduler at {server}")), "{err}");
    assert!(err.contains("Connection refused") && err.contains("greenfill-scheduler --config"), "{err}");
}

#[test]
fn a_refused_submit_names_the_grpc_code_and_times_in_rfc_3339() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("s.toml");
    std::fs::write(&config, format!("listen = \"127.0.0.1:{port}\"\nuser_tokens = [\"u\"]\nagent_tokens = [\"a\"]\n"))
        .unwrap();
    let _scheduler = Proc(
        Command::new(support::bin("greenfill-scheduler"))
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("db"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("scheduler.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "the scheduler did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let server = format!("http://127.0.0.1:{port}");
    let submit = ["submit", "--server", &server, "--token", "u", "--cpu", "1", "--memory", "64Mi", "--duration", "1m"];
    let o = greenfill(&[&submit[..], &["--deadline", "2020-01-02T03:04:05Z", "--", "true"]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("INVALID_ARGUMENT: spec.deadline = 2020-01-02T03:04:05Z: is not after now (20"), "{err}");
    assert!(!err.contains("INVALIDARGUMENT") && err.trim_end().lines().count() == 1, "{err}");
    // The "now" it names is an RFC 3339 time too, not unix seconds.
    let now = err.split("is not after now (").nth(1).and_then(|r| r.split(')').next()).unwrap();
    assert!(greenfill_core::time::parse_timestamp(now).is_some() && now.ends_with('Z') && now.contains('T'), "{now}");
    let o = greenfill(&["job", "no-such-job", "--server", &server, "--token", "u"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: NOT_FOUND: "), "{err}");
    // A cancel is in the audit log, with who and why, and times in RFC 3339.
    let id = stdout(&greenfill(&[&submit[..], &["--", "true"]].concat())).trim().to_owned();
    stdout(&greenfill(&["cancel", &id, "--reason", "not today", "--server", &server, "--token", "u"]));
    let audit = stdout(&greenfill(&["audit", "--job", &id, "--json", "--server", &server, "--token", "u"]));
    let rows: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let row = &rows[0];
    assert_eq!(
        (row["kind"].as_str(), row["actor"].as_str(), row["accepted"].as_bool()),
        (Some("cancel"), Some("admin"), Some(true)),
        "{audit}"
    );
    assert!(row["reason"].as_str().unwrap().contains("not today"), "{audit}");
    assert!(greenfill_core::time::parse_timestamp(row["time"].as_str().unwrap()).is_some(), "{audit}");
    let table = stdout(&greenfill(&["audit", "--since", "now-1h", "--server", &server, "--token", "u"]));
    assert!(table.starts_with("TIME") && table.contains("cancel") && table.contains("not today"), "{table}");
}

#[test]
fn completions_generate_for_three_shells_and_the_manual_page_renders() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef greenfill"), ("fish", "complete -c greenfill")] {
        let out = stdout(&greenfill(&["completions", shell]));
        assert!(out.contains(marker), "{shell}: no `{marker}`");
        assert!(out.contains("replay") && out.contains("export"), "{shell}: subcommands missing");
    }
    let o = greenfill(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2), "an unknown shell is a usage error");
    let page = stdout(&greenfill(&["man"]));
    assert!(page.contains(".TH greenfill 1") && page.contains("sim"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let o = greenfill(&["man", "--out", dir.path().to_str().unwrap()]);
    stdout(&o);
    for page in ["greenfill.1", "greenfill-sim.1", "greenfill-sim-run.1", "greenfill-jobs-export.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
}
