use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::procs::{Helper, parse_hwm, parse_stat};
use super::report::nice_step;
use super::*;

/// The environment variable through which the test binary acts as the
/// `http-serve` / `http-fetch` helper (see [`helper_entry`]).
const HELPER_ENV: &str = "BATON_BENCH_TEST_HELPER";

/// Not a test: when the namespace test runs this binary as its helper
/// (`<test exe> --exact bench::tests::helper_entry` with the helper's
/// arguments in `$BATON_BENCH_TEST_HELPER`), it runs the helper and exits.
#[test]
fn helper_entry() {
    let Ok(args) = std::env::var(HELPER_ENV) else {
        return;
    };
    let args: Vec<String> = args.split('\u{1f}').map(str::to_owned).collect();
    let code = match helper_main(&args) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("helper: {err:#}");
            1
        }
    };
    std::process::exit(code);
}

fn use_test_helper() {
    Helper::set_override(
        std::env::current_exe().unwrap(),
        vec![
            "--exact".into(),
            "bench::tests::helper_entry".into(),
            "--nocapture".into(),
            "--quiet".into(),
        ],
        HELPER_ENV,
    );
}

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn cli(args: &[&str]) -> Result<BenchArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
}

#[test]
fn sizes() {
    assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
    assert_eq!(parse_size("500KiB").unwrap(), 500 << 10);
    assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
    assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
    assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
    assert_eq!(parse_size("1k").unwrap(), 1000);
    assert_eq!(parse_size("12345").unwrap(), 12345);
    assert_eq!(parse_size(" 8 mib ").unwrap(), 8 << 20);
    assert_eq!(parse_size("7B").unwrap(), 7);
    for bad in ["", "MiB", "0", "-1MiB", "10 furlongs", "1e3", "99999TB"] {
        assert!(parse_size(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(human_size(64 << 20), "64 MiB");
    assert_eq!(human_size(1536), "1.50 KiB");
    assert_eq!(human_size(100), "100 B");
}

#[test]
fn slow_nodes_and_args() {
    assert_eq!(
        parse_slow("3:10mbit").unwrap(),
        SlowNode {
            node: 3,
            rate: "10mbit".into()
        }
    );
    assert!(parse_slow("0:10mbit").unwrap_err().contains("from 1"));
    for bad in ["3", "x:10mbit", "3:fast", "3:", ":10mbit"] {
        assert!(parse_slow(bad).is_err(), "{bad:?} accepted");
    }

    let a = cli(&[]).unwrap();
    assert_eq!(a.nodes, 8);
    assert_eq!(a.size, 64 << 20);
    assert_eq!(a.rate, "100mbit");
    assert_eq!(a.runs, 1);
    assert!(a.methods.is_empty() && a.slow.is_empty() && !a.json && !a.keep_going);

    let a = cli(&[
        "--nodes",
        "4",
        "--size",
        "8MiB",
        "--rate",
        "1gbit",
        "--slow",
        "2:10mbit",
        "--slow",
        "4:1mbit",
        "--methods",
        "t1,naive",
        "--runs",
        "3",
        "--loss",
        "0.5%",
        "--json",
        "--keep-going",
        "--out",
        "/tmp/x",
    ])
    .unwrap();
    assert_eq!((a.nodes, a.size, a.runs), (4, 8 << 20, 3));
    assert_eq!(a.slow.len(), 2);
    assert_eq!(a.slow[1].node, 4);
    assert_eq!(a.methods, ["t1", "naive"]);
    assert_eq!(a.loss.as_deref(), Some("0.5%"));
    assert!(a.json && a.keep_going);
    assert_eq!(a.out, Some(PathBuf::from("/tmp/x")));

    assert!(cli(&["--size", "lots"]).is_err());
    assert!(cli(&["--rate", "fast"]).is_err());
    assert!(cli(&["--runs", "0"]).is_err());
    assert!(cli(&["--slow", "a:b"]).is_err());
}

#[test]
fn method_selection() {
    let names = |ms: &[Box<dyn Method>]| ms.iter().map(|m| m.name()).collect::<Vec<_>>();
    let all = names(&builtin_methods());
    assert_eq!(all, ["t1", "naive", "torrent", "uftp", "uftp-enc", "udpcast"]);
    assert_eq!(names(&select_methods(builtin_methods(), &[]).unwrap()), all);
    // The order is the report order, not the order asked for.
    let picked = select_methods(builtin_methods(), &["udpcast".into(), " T1".into()]).unwrap();
    assert_eq!(names(&picked), ["t1", "udpcast"]);
    let err = select_methods(builtin_methods(), &["t1".into(), "bittorrent".into()])
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("\"bittorrent\""), "{msg}");
    assert!(
        msg.contains("t1, naive, torrent, uftp, uftp-enc, udpcast"),
        "{msg}"
    );
    for m in builtin_methods() {
        assert!(!m.describe().is_empty());
        if let Some(missing) = m.missing_tool() {
            assert!(missing.contains("apt-get install"), "{missing}");
        }
    }
    let missing = missing_tools(&[("no-such-tool-xyz", "xyz-pkg"), ("sh", "dash")]).unwrap();
    assert_eq!(missing, "no-such-tool-xyz not found: apt-get install xyz-pkg");
    assert!(missing_tools(&[("sh", "dash")]).is_none());
}

#[test]
fn medians() {
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[3.0]), Some(3.0));
    assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
}

#[test]
fn proc_parsing_and_misc() {
    let stat = "1234 (aria2c (x) y) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 3 2 20 0 1 0";
    assert_eq!(parse_stat(stat), Some(('S', 305)));
    assert_eq!(parse_stat("1 (z) Z 0"), None);
    let status = "Name:\tuftpd\nVmPeak:\t  9000 kB\nVmHWM:\t    4321 kB\nVmRSS:\t 4000 kB\n";
    assert_eq!(parse_hwm(status), Some(4321));
    assert_eq!(parse_hwm("Name: x\n"), None);

    let u = http::parse_url("http://198.18.0.1:8000/package.bin").unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.path.as_str()),
        ("198.18.0.1", 8000, "/package.bin")
    );
    let u = http::parse_url("http://example.invalid").unwrap();
    assert_eq!((u.port, u.path.as_str()), (80, "/"));
    assert!(http::parse_url("https://x/").is_err());
    assert!(http::parse_url("http://:80/").is_err());
    assert!(http::parse_url("http://x:port/").is_err());
    assert_eq!(http::percent_encode(&[0x00, 0xab, 0x7f]), "%00%AB%7F");

    let scrape = b"d5:filesd20:aaaaaaaaaaaaaaaaaaaad8:completei3e10:downloadedi0e10:incompletei1eeee";
    assert_eq!(methods::seeders_in_scrape(scrape), 3);
    assert_eq!(methods::seeders_in_scrape(b"d5:filesdee"), 0);

    assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(format_utc(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(format_utc(4_107_542_399), "2100-02-28T23:59:59Z");
}

#[test]
fn package_is_random_and_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let ha = make_package(&a, 3 * 1024 * 1024 + 17).unwrap();
    let hb = make_package(&b, 3 * 1024 * 1024 + 17).unwrap();
    assert_ne!(ha, hb);
    assert_eq!(std::fs::metadata(&a).unwrap().len(), 3 * 1024 * 1024 + 17);
    assert_eq!(hash_file(&a).unwrap(), ha);
}

#[test]
fn http_server_and_client_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pkg");
    let hash = make_package(&file, 2 * 1024 * 1024 + 5).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ready = dir.path().join("ready");
    let serve = HttpServeArgs {
        file: file.clone(),
        bind: "127.0.0.1".parse().unwrap(),
        port,
        ready_file: Some(ready.clone()),
    };
    // The server thread lives until the test process ends.
    std::thread::spawn(move || http_serve(&serve));
    for _ in 0..500 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ready.exists());
    let out = dir.path().join("copy");
    http_fetch(&HttpFetchArgs {
        url: format!("http://127.0.0.1:{port}/whatever"),
        out: out.clone(),
        timeout: 10,
    })
    .unwrap();
    assert_eq!(hash_file(&out).unwrap(), hash);
    assert!(!dir.path().join("copy.part").exists());

    // Through helper_main, as the hidden subcommand would.
    let out2 = dir.path().join("copy2");
    helper_main(&[
        "http-fetch".into(),
        "--url".into(),
        format!("http://127.0.0.1:{port}/"),
        "--out".into(),
        out2.to_string_lossy().into_owned(),
    ])
    .unwrap();
    assert_eq!(hash_file(&out2).unwrap(), hash);

    // A closed port fails with a clear error.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = http_fetch(&HttpFetchArgs {
        url: format!("http://127.0.0.1:{closed}/"),
        out: dir.path().join("nothing"),
        timeout: 2,
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("cannot connect"), "{err:#}");
    assert!(helper_main(&["no-such-helper".into()]).is_err());
}

fn sample_config(runs: usize) -> BenchConfig {
    BenchConfig {
        nodes: 3,
        size: 64 << 20,
        rate: "100mbit".into(),
        slow: vec![SlowNode {
            node: 2,
            rate: "10mbit".into(),
        }],
        loss: None,
        delay: None,
        runs,
        command: "baton-testbed bench --nodes 3".into(),
        started: "2026-01-01T00:00:00Z".into(),
    }
}

fn secs(s: f64) -> Option<Duration> {
    Some(Duration::from_secs_f64(s))
}

fn sample_results() -> (Vec<Vec<MethodResult>>, Vec<(String, String)>) {
    let size = 64u64 << 20;
    let run = |t1: f64, naive: [f64; 3], cpu: f64| {
        vec![
            MethodResult {
                method: "t1".into(),
                wall: secs(t1),
                per_node: vec![secs(t1)],
                nms_tx_bytes: size + size / 30,
                verified_nodes: 1,
                nodes: 1,
                cpu_secs: Some(cpu),
                peak_rss_kib: Some(2048),
                skipped: None,
                error: None,
                ..MethodResult::default()
            },
            MethodResult {
                method: "naive".into(),
                wall: naive.iter().copied().reduce(f64::max).and_then(secs),
                per_node: naive.iter().map(|&t| secs(t)).collect(),
                nms_tx_bytes: 3 * size,
                verified_nodes: 3,
                nodes: 3,
                cpu_secs: Some(cpu * 3.0),
                peak_rss_kib: Some(4096),
                skipped: None,
                error: None,
                ..MethodResult::default()
            },
            MethodResult {
                method: "torrent".into(),
                wall: None,
                per_node: vec![secs(9.0), None, secs(10.0)],
                nms_tx_bytes: size,
                verified_nodes: 2,
                nodes: 3,
                cpu_secs: None,
                peak_rss_kib: None,
                skipped: None,
                error: Some("node 2: timed out <after> 60 s".into()),
                ..MethodResult::default()
            },
            MethodResult {
                skipped: Some("uftp not found: apt-get install uftp".into()),
                ..MethodResult::new("uftp", 3)
            },
        ]
    };
    let results = vec![
        run(5.0, [14.0, 15.0, 16.0], 1.0),
        run(6.0, [15.0, 16.0, 17.0], 2.0),
        run(5.5, [16.0, 17.0, 19.0], 3.0),
    ];
    let methods = ["t1", "naive", "torrent", "uftp", "udpcast"]
        .iter()
        .map(|m| (m.to_string(), format!("the {m} method")))
        .collect();
    (results, methods)
}

#[test]
fn summary_of_fixed_results() {
    let (results, methods) = sample_results();
    let s = summarize(&results, &methods, 64 << 20);
    // udpcast has no results and is left out.
    let names: Vec<&str> = s.iter().map(|x| x.method.as_str()).collect();
    assert_eq!(names, ["t1", "naive", "torrent", "uftp"]);
    let t1 = &s[0];
    assert_eq!(t1.wall_s, Some(5.5));
    assert_eq!(t1.ratio_t1, Some(1.0));
    assert_eq!(t1.cpu_s, Some(2.0));
    assert_eq!((t1.runs, t1.ok_runs, t1.verified, t1.nodes), (3, 3, Some(1), 1));
    let naive = &s[1];
    assert_eq!(naive.wall_s, Some(17.0));
    assert!((naive.ratio_t1.unwrap() - 17.0 / 5.5).abs() < 1e-9);
    assert_eq!(naive.nms_copies, Some(3.0));
    assert_eq!(naive.per_node_s, [Some(15.0), Some(16.0), Some(17.0)]);
    let torrent = &s[2];
    assert_eq!((torrent.wall_s, torrent.ok_runs), (None, 0));
    assert_eq!(torrent.per_node_s, [Some(9.0), None, Some(10.0)]);
    assert_eq!(torrent.errors.len(), 3);
    assert!(torrent.errors[0].starts_with("run 1: node 2"));
    let uftp = &s[3];
    assert_eq!((uftp.runs, uftp.verified), (0, None));
    assert!(uftp.skipped.as_deref().unwrap().contains("apt-get install uftp"));
}

#[test]
fn markdown_report() {
    let (results, methods) = sample_results();
    let s = summarize(&results, &methods, 64 << 20);
    let md = render_markdown(&sample_config(3), &s);
    let lines: Vec<&str> = md.lines().collect();
    assert!(lines[0].starts_with("# "));
    let header = lines
        .iter()
        .position(|l| l.starts_with("| method |"))
        .expect("table header");
    assert!(lines[header + 1].starts_with("|---|"));
    let rows: Vec<&str> = lines[header + 2..]
        .iter()
        .take_while(|l| l.starts_with('|'))
        .copied()
        .collect();
    assert_eq!(rows.len(), 4, "{md}");
    let cols = |row: &str| row.matches('|').count() - row.matches("\\|").count();
    for row in &rows {
        assert_eq!(cols(row), cols(lines[header]), "{row}");
    }
    assert!(
        rows[0].starts_with("| t1 | 5.50 | 1.00 | 1.03 | 1/1 | 2.00 | 2.0 |"),
        "{}",
        rows[0]
    );
    assert!(
        rows[1].starts_with("| naive | 17.00 | 3.09 | 3.00 | 3/3 |"),
        "{}",
        rows[1]
    );
    assert!(rows[2].contains("3 of 3 runs failed"), "{}", rows[2]);
    assert!(rows[2].contains("timed out <after> 60 s"), "{}", rows[2]);
    assert!(rows[3].contains("skipped: uftp not found: apt-get install uftp"));
    assert!(md.contains("3 runs per method"));
    assert!(md.contains("node 2 at 10mbit"));
    assert!(md.contains("- `naive`: the naive method"));
}

#[test]
fn json_report() {
    let (results, methods) = sample_results();
    let s = summarize(&results, &methods, 64 << 20);
    let v = render_json(&sample_config(3), &s, &results);
    assert_eq!(v["config"]["nodes"], 3);
    assert_eq!(v["config"]["slow"][0]["node"], 2);
    assert_eq!(v["summary"].as_array().unwrap().len(), 4);
    assert_eq!(v["summary"][1]["method"], "naive");
    assert_eq!(v["summary"][1]["wall_s"], 17.0);
    assert_eq!(v["runs"].as_array().unwrap().len(), 3);
    assert_eq!(v["runs"][0][2]["per_node_s"][1], serde_json::Value::Null);
    assert_eq!(v["runs"][0][0]["nms_tx_bytes"], (64u64 << 20) + (64 << 20) / 30);
    // Round-trips as text.
    let text = serde_json::to_string(&v).unwrap();
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back, v);
}

#[test]
fn svg_plot() {
    let (results, methods) = sample_results();
    let s = summarize(&results, &methods, 64 << 20);
    let svg = render_svg(&sample_config(3), &s);
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    // Balanced elements.
    for tag in ["g", "text", "circle", "line", "title"] {
        let open = svg.matches(&format!("<{tag} ")).count() + svg.matches(&format!("<{tag}>")).count();
        let selfclosed = svg
            .split(&format!("<{tag}"))
            .skip(1)
            .filter(|rest| {
                let end = rest.find('>').unwrap();
                rest[..end].ends_with('/')
            })
            .count();
        let close = svg.matches(&format!("</{tag}>")).count();
        assert_eq!(open, selfclosed + close, "<{tag}> unbalanced");
    }
    // One marker per finished node: t1 1 + naive 3 + torrent 2.
    assert_eq!(svg.matches("class=\"node\"").count(), 6);
    // A wall bar for the two methods that finished.
    assert_eq!(svg.matches("class=\"wall\"").count(), 2);
    assert_eq!(svg.matches("class=\"method\"").count(), 4);
    assert_eq!(svg.matches("class=\"t1\"").count(), 1);
    assert!(svg.contains("T1 = 5.50 s"));
    assert!(svg.contains(">skipped<"));
    assert!(svg.contains("failed (2/3 nodes)"));
    assert!(svg.contains("seconds since the start"));
    assert!(svg.contains("class=\"legend\""));
    // Ticks 0, 2, 4, ... up past the last time (19 s).
    let ticks: Vec<f64> = svg
        .lines()
        .filter(|l| l.contains("class=\"tick\""))
        .map(|l| {
            let t = &l[l.find('>').unwrap() + 1..l.rfind("</text>").unwrap()];
            t.parse().unwrap()
        })
        .collect();
    assert_eq!(ticks.first(), Some(&0.0));
    assert!(ticks.len() >= 5 && ticks.len() <= 12, "{ticks:?}");
    assert!(*ticks.last().unwrap() >= 19.0);
    assert!(!svg.contains("<after>"), "text must be escaped");

    assert_eq!(nice_step(19.95, 8.0), 5.0);
    assert_eq!(nice_step(10.0, 10.0), 1.0);
    assert_eq!(nice_step(0.7, 8.0), 0.1);
    assert_eq!(nice_step(300.0, 8.0), 50.0);

    // No results at all still renders.
    let empty = render_svg(&sample_config(1), &[]);
    assert!(empty.contains("</svg>"));
}

/// Returns false (after saying so) when not root.
fn privileged(test: &str) -> bool {
    match crate::netns::check_privileges() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("skipped: {why} ({test})");
            false
        }
    }
}

#[test]
fn t1_and_naive_in_namespaces() {
    if !privileged("bench::tests::t1_and_naive_in_namespaces") {
        return;
    }
    use_test_helper();
    let out = tempfile::tempdir().unwrap();
    let args = BenchArgs {
        nodes: 2,
        size: 1 << 20,
        rate: "100mbit".into(),
        methods: vec!["t1".into(), "naive".into()],
        out: Some(out.path().to_owned()),
        ..BenchArgs::default()
    };
    let used = run_inner(&args, Vec::new(), false).unwrap();
    assert_eq!(used.len(), 4, "{used:?}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let summary = json["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 2, "{json:#}");
    assert_eq!(summary[0]["method"], "t1");
    assert_eq!(summary[0]["verified_nodes"], 1);
    assert_eq!(summary[1]["method"], "naive");
    assert_eq!(summary[1]["verified_nodes"], 2);
    // 1 MiB at 100 Mbit/s is ~0.09 s; allow a slow debug build.
    let t1 = summary[0]["wall_s"].as_f64().unwrap();
    assert!(t1 > 0.05 && t1 < 10.0, "t1 {t1}");
    let copies = summary[1]["nms_copies"].as_f64().unwrap();
    assert!((2.0..2.3).contains(&copies), "naive sent {copies} copies");
    for f in ["results.md", "completion.svg"] {
        assert!(out.path().join(f).is_file(), "{f} missing");
    }
    // Nothing of it is left.
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    for name in &used {
        assert!(
            !left
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name.as_str())),
            "{name} left: {left}"
        );
    }
}

#[test]
fn bytes_served_per_node_are_medians_marked_gated_in_the_table_and_the_json() {
    let size = 8u64 << 20;
    let run = |a: u64, b: u64| MethodResult {
        method: "baton-gated".into(),
        wall: secs(4.0),
        per_node: vec![secs(4.0); 3],
        verified_nodes: 3,
        nodes: 3,
        served_bytes: vec![Some(a), Some(0), Some(b)],
        gated_nodes: vec![2],
        ..MethodResult::default()
    };
    let results = vec![vec![run(size, 0)], vec![run(size, size)], vec![run(3 * size, 0)]];
    let methods = vec![("baton-gated".to_string(), "gated".to_string())];
    let s = summarize(&results, &methods, size);
    assert_eq!(s[0].served_bytes, [Some(size), Some(0), Some(0)]);
    assert_eq!(s[0].gated_nodes, [2]);
    let md = render_markdown(&sample_config(3), &s);
    assert!(
        md.contains("- `baton-gated`: node 1 8 MiB, node 2 0 B (gated), node 3 0 B"),
        "{md}"
    );
    let json = render_json(&sample_config(3), &s, &results);
    assert_eq!(json["summary"][0]["gated_nodes"][0], 2);
    assert_eq!(json["runs"][1][0]["served_bytes"][2], size);
    // other nodes gated in another run: the runs are listed one by one
    let mut other = run(size, 0);
    other.gated_nodes = vec![3];
    let results = vec![vec![run(size, 0)], vec![other]];
    let md = render_markdown(&sample_config(3), &summarize(&results, &methods, size));
    assert!(
        md.contains("- `baton-gated` run 1: node 1 8 MiB, node 2 0 B (gated), node 3 0 B\n")
            && md.contains("- `baton-gated` run 2: node 1 8 MiB, node 2 0 B, node 3 0 B (gated)\n"),
        "{md}"
    );
    // methods without the figures get no such section
    let (plain, plain_methods) = sample_results();
    let md = render_markdown(&sample_config(3), &summarize(&plain, &plain_methods, 64 << 20));
    assert!(!md.contains("Bytes each node served"), "{md}");
}
