//! Placement unit tests: every placement the repository's graphs, docs and tests use resolves to
//! what it resolved to before the serde rewrite (`golden.txt`, written by the hand-walked
//! parser), errors name their field, link numbers stay in range, bare names are CPU streams.

use super::*;

/// The test fixture `deepseek-v3-tiny`: 4 layers, layer 0 dense, 16 routed experts.
const TINY: &[Option<usize>] = &[None, Some(16), Some(16), Some(16)];

/// ds-v3-mini (graphs/): 8 layers, layer 0 dense, 64 routed experts.
fn mini() -> Vec<Option<usize>> {
    (0..8).map(|l| (l >= 1).then_some(64)).collect()
}

/// deepseek-v3-671b (graphs/): 61 layers, 0..3 dense, 256 routed experts.
fn v3() -> Vec<Option<usize>> {
    (0..61).map(|l| (l >= 3).then_some(256)).collect()
}

fn table(text: &str) -> Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn resolve(text: &str, layers: &[Option<usize>]) -> Result<Placement> {
    PlacementSpec::from_table(Some(&table(text)))?.resolve(layers, None)
}

/// The field a placement error names.
fn err_field(text: &str, layers: &[Option<usize>]) -> (String, String) {
    match resolve(text, layers) {
        Err(ActorError::Placement { field, message }) => (field, message),
        Err(e) => panic!("{text:?}: not a placement error: {e}"),
        Ok(p) => panic!("{text:?}: accepted as {}", render(&p)),
    }
}

/// One line per resolved fact, devices by name: what the golden file holds.
fn render(p: &Placement) -> String {
    let mut out = String::new();
    let streams: Vec<String> = p
        .streams
        .iter()
        .zip(&p.stream_devices)
        .map(|(n, d)| format!("{n}@{d}"))
        .collect();
    out += &format!("streams {}\n", streams.join(" "));
    out += &format!("stages {:?}\n", p.stages);
    out += &format!("stage_streams {:?}\n", p.stage_streams);
    out += &format!("stage_nodes {:?} nodes {}\n", p.stage_nodes, p.nodes);
    for (l, groups) in p.expert_groups.iter().enumerate() {
        let g: Vec<String> = groups
            .iter()
            .map(|g| format!("{:?}s{}n{}", g.experts, g.stream, g.node))
            .collect();
        out += &format!("layer{l} {}\n", g.join(" "));
    }
    out += &format!(
        "link {:?}\n",
        p.link.map(|l| (l.latency.as_nanos(), l.gbps))
    );
    out += &format!("channel_capacity {}\n", p.channel_capacity);
    out += &format!("supervision {:?}\n", p.supervision);
    out
}

/// Every `[placement]` this repository writes: the graph README's example, the actor tests'
/// placements (bad_input, devices, nodes, observability, determinism's shapes) and defaults.
const CASES: &[(&str, &str)] = &[
    ("tiny", ""),
    ("tiny", "streams = 2"),
    ("tiny", "streams = 1"),
    ("tiny", "streams = 3\nstages = 2\nexpert_group_size = 4\nnodes = 2\nexpert_nodes = [1]\n[link]\nlatency_us = 20\ngbps = 10"),
    ("tiny", "nodes = 2\nstage_nodes = [1]\nexpert_nodes = [1]"),
    ("tiny", "nodes = 2\nexpert_nodes = [1]"),
    ("tiny", "nodes = 2\nstages = 2\nstage_nodes = [0, 1]\nexpert_nodes = [0, 1]"),
    ("tiny", "nodes = 2\n[[expert_groups]]\nexperts = [0, 1, 2, 3, 4, 5, 6, 7]\nstream = \"cpu0\"\nnode = 0\n[[expert_groups]]\nexperts = [8, 9, 10, 11, 12, 13, 14, 15]\nstream = \"cpu1\"\nnode = 1"),
    ("tiny", "[[streams]]\nname = \"main\"\ndevice = \"cpu\"\n[[streams]]\nname = \"side\""),
    ("tiny", "streams = 4\nstages = [[0, 0], [1, 2], [3, 3]]\nstage_streams = [\"cpu3\", \"cpu0\", \"cpu3\"]\nexperts = \"block\"\nexpert_group_size = 3\nchannel_capacity = 2\nnodes = 2\nstage_nodes = [1, 0, 1]\nexpert_nodes = [1, 0]\n[link]\nlatency_us = 7\ngbps = 42.0"),
    ("tiny", "streams = 3\nstages = [[0, 3]]\nstage_streams = [\"cpu2\"]\nexperts = \"round-robin\"\nexpert_group_size = 16"),
    ("tiny", "streams = [\"cpu0\", \"cpu1\", \"cpuX\"]\nexpert_streams = [\"cpuX\", \"cpu0\"]\nexperts = \"block\""),
    ("tiny", "[[expert_groups]]\nlayer = 2\nexperts = [15, 0, 3, 9]\nstream = \"cpu1\"\n[[expert_groups]]\nlayer = 2\nexperts = [1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14]\nstream = \"cpu0\""),
    ("tiny", "[supervision]\nmax_restarts = 1\nwindow_ms = 500\ndeadline_ms = 200"),
    ("tiny", "[link]\ngbps = 1"),
    ("mini", "streams = 3\nstages = 2\nstage_streams = [\"cpu0\", \"cpu1\"]\nexperts = \"round-robin\"\nexpert_group_size = 1\nexpert_streams = [\"cpu1\", \"cpu2\"]\nnodes = 1\nstage_nodes = [0, 0]\nexpert_nodes = [0]\nchannel_capacity = 4"),
    ("mini", "streams = 3\nstages = 2\nstage_streams = [\"cpu0\", \"cpu1\"]\nexperts = \"round-robin\"\nexpert_group_size = 1\nexpert_streams = [\"cpu1\", \"cpu2\"]\nnodes = 2\nstage_nodes = [0, 0]\nexpert_nodes = [1]\nchannel_capacity = 4\n[link]\nlatency_us = 100\ngbps = 10\n[supervision]\nmax_restarts = 3\nwindow_ms = 10000\ndeadline_ms = 30000"),
    ("mini", ""),
    ("mini", "nodes = 2\nexpert_nodes = [1]"),
    ("v3", ""),
    ("v3", "streams = 8\nstages = 4\nexperts = \"block\""),
];

fn layers_of(name: &str) -> Vec<Option<usize>> {
    match name {
        "tiny" => TINY.to_vec(),
        "mini" => mini(),
        "v3" => v3(),
        other => panic!("unknown model {other}"),
    }
}

/// The rendering of every case (an error renders as its field and message).
fn render_cases(resolve: impl Fn(&Table, &[Option<usize>]) -> String) -> String {
    let mut out = String::new();
    for (model, text) in CASES {
        out += &format!("== {model}: {text:?}\n");
        let t: Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => panic!("{text:?}: {e}"),
        };
        out += &resolve(&t, &layers_of(model));
    }
    out
}

fn render_result(r: Result<Placement>) -> String {
    match r {
        Ok(p) => render(&p),
        Err(ActorError::Placement { field, .. }) => format!("error at {field}\n"),
        Err(e) => format!("error {e}\n"),
    }
}

#[test]
fn known_placements_resolve_as_before_the_serde_rewrite() {
    let got = render_cases(|t, layers| {
        render_result(PlacementSpec::from_table(Some(t)).and_then(|s| s.resolve(layers, None)))
    });
    let want = include_str!("golden.txt");
    if got != want {
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            assert_eq!(g, w, "golden.txt line {}", i + 1);
        }
        assert_eq!(
            got.lines().count(),
            want.lines().count(),
            "golden.txt length"
        );
    }
}

#[test]
fn graph_files_and_the_readme_example_resolve() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for graph in ["graphs/ds-v3-mini.toml", "graphs/deepseek-v3-671b.toml"] {
        let text = std::fs::read_to_string(format!("{root}/{graph}")).expect(graph);
        let doc: Table = toml::from_str(&text).expect(graph);
        let placement = doc.get("placement").and_then(|v| v.as_table());
        let layers = if graph.contains("mini") { mini() } else { v3() };
        PlacementSpec::from_table(placement)
            .and_then(|s| s.resolve(&layers, None))
            .unwrap_or_else(|e| panic!("{graph}: {e}"));
    }
    // The README's annotated example: every field it shows is known and well-typed (its
    // `[[placement.streams]]` alternative is read on its own: it conflicts with `streams = 3`).
    let readme = std::fs::read_to_string(format!("{root}/graphs/README.md")).expect("README");
    let block = readme
        .split("```toml\n[placement]\n")
        .nth(1)
        .and_then(|b| b.split("\n[schedule]").next())
        .expect("README placement example");
    let (main, alt) = block
        .split_once("[[placement.streams]]")
        .expect("README streams table example");
    let (alt, rest) = alt.split_once("\n\n").expect("README example layout");
    for text in [
        format!("[placement]\n{main}{rest}"),
        format!("[[placement.streams]]{alt}"),
    ] {
        let doc: Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let t = doc["placement"].as_table().expect("table");
        PlacementSpec::from_table(Some(t)).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}

#[test]
fn type_and_unknown_field_errors_name_the_field() {
    for (text, field) in [
        ("colour = \"red\"", "colour"),
        ("[link]\ngbps = 1\ncolour = 1", "link.colour"),
        ("[link]\ngbps = \"fast\"", "link.gbps"),
        ("[supervision]\nwindow = 3", "supervision.window"),
        ("[supervision]\nwindow_ms = -3", "supervision.window_ms"),
        ("[[streams]]\nname = \"a\"\n[[streams]]\nname = \"b\"\nexpert_streams = 0", "streams[1].expert_streams"),
        ("[[streams]]\nname = \"a\"\n[[streams]]\nname = \"b\"\n[[streams]]\nname = \"c\"\ndevice = \"a b\"", "streams[2].device"),
        ("[[streams]]\nname = \"a\"\ndevice = 3", "streams[0].device"),
        ("streams = 3.5", "streams"),
        ("streams = 0", "streams"),
        ("streams = 257", "streams"),
        ("streams = []", "streams"),
        ("streams = [\"\"]", "streams[0]"),
        ("stages = -1", "stages"),
        ("stages = \"two\"", "stages"),
        ("stage_streams = \"cpu0\"", "stage_streams"),
        ("stage_streams = [1]", "stage_streams[0]"),
        ("experts = \"zigzag\"", "experts"),
        ("expert_group_size = 0", "expert_group_size"),
        ("expert_streams = []", "expert_streams"),
        ("nodes = 0", "nodes"),
        ("nodes = 2\nstage_nodes = [2]", "stage_nodes[0]"),
        ("expert_nodes = []", "expert_nodes"),
        ("expert_nodes = [-1]", "expert_nodes[0]"),
        ("channel_capacity = 0", "channel_capacity"),
        ("[[expert_groups]]\nexperts = [0]\nstream = \"cpu0\"\nweight = 2", "expert_groups[0].weight"),
        ("[[expert_groups]]\nstream = \"cpu0\"", "expert_groups[0].experts"),
        ("[[expert_groups]]\nexperts = []\nstream = \"cpu0\"", "expert_groups[0].experts"),
        ("[[expert_groups]]\nexperts = [0]", "expert_groups[0].stream"),
        ("[[expert_groups]]\nexperts = [0]\nstream = \"cpu0\"\nnode = 1", "expert_groups[0].node"),
        ("[[expert_groups]]\nlayer = 0\nexperts = [0]\nstream = \"cpu0\"", "expert_groups[0].layer"),
        ("[supervision]\ndeadline_ms = 0", "supervision.deadline_ms"),
        ("[supervision]\ndeadline_ms = 86400001", "supervision.deadline_ms"),
        ("[supervision]\nwindow_ms = 9223372036854775807", "supervision.window_ms"),
    ] {
        assert_eq!(err_field(text, TINY).0, field, "{text:?}");
    }
    let (_, m) = err_field("colour = \"red\"", TINY);
    assert!(
        m.contains("unknown field `colour`") && m.contains("`streams`"),
        "{m}"
    );
}

#[test]
fn extreme_link_numbers_are_refused_naming_the_field() {
    // 1e300 µs panicked converting to a Duration; 1e-300 Gbit/s panicked inside an actor.
    for (link, field) in [
        ("latency_us = 1e300\ngbps = 10", "link.latency_us"),
        ("latency_us = 1000001\ngbps = 10", "link.latency_us"),
        ("latency_us = nan\ngbps = 10", "link.latency_us"),
        ("latency_us = inf\ngbps = 10", "link.latency_us"),
        ("latency_us = -inf\ngbps = 10", "link.latency_us"),
        ("latency_us = -1\ngbps = 10", "link.latency_us"),
        ("gbps = 1e-300", "link.gbps"),
        ("gbps = 0", "link.gbps"),
        ("gbps = -10", "link.gbps"),
        ("gbps = nan", "link.gbps"),
        ("gbps = inf", "link.gbps"),
        ("gbps = 1e300", "link.gbps"),
        ("latency_us = 5", "link.gbps"),
    ] {
        let text = format!("[link]\n{link}");
        let (f, m) = err_field(&text, TINY);
        assert_eq!(f, field, "{text:?}");
        assert!(!m.is_empty());
    }
    // The bounds themselves are accepted.
    let p = resolve("[link]\nlatency_us = 1000000\ngbps = 0.001", TINY).expect("lower bounds");
    assert_eq!(p.link.map(|l| l.latency), Some(Duration::from_secs(1)));
    resolve("[link]\nlatency_us = 0\ngbps = 1e6", TINY).expect("upper bounds");
    // A programmatic spec is checked the same way.
    let bad = LinkSpec {
        latency: Duration::from_secs(5),
        gbps: 10.0,
    };
    assert!(
        matches!(bad.validate(), Err(ActorError::Placement { field, .. }) if field == "link.latency_us")
    );
    assert!(LinkSpec::new(100.0, 10.0).expect("ok").validate().is_ok());
}

#[test]
fn bare_stream_names_are_cpu_streams_and_devices_are_typed() {
    let p = resolve("streams = [\"gpu0\", \"main\", \"cpu9\"]", TINY).expect("bare names");
    assert_eq!(p.streams, ["gpu0", "main", "cpu9"]);
    assert_eq!(p.stream_devices, vec![DeviceId::Cpu; 3]);
    // A bare name that reads as another device is refused: bind it with a table.
    for name in ["cuda:0", "cuda", "ptx-interp"] {
        let (f, m) = err_field(&format!("streams = [\"{name}\"]"), TINY);
        assert_eq!(f, "streams[0]");
        assert!(m.contains("device = "), "{m}");
    }
    let p = resolve(
        "[[streams]]\nname = \"a\"\ndevice = \"cuda:1\"\n[[streams]]\nname = \"b\"\ndevice = \"npu.0\"\n[[streams]]\nname = \"c\"\ndevice = \"ptx-interp\"\n[[streams]]\nname = \"d\"",
        TINY,
    )
    .expect("devices");
    assert_eq!(
        p.stream_devices,
        [
            DeviceId::Cuda(1),
            DeviceId::Custom("npu.0".into()),
            DeviceId::PtxInterp,
            DeviceId::Cpu
        ]
    );
    let mut p = p;
    p.put_all_streams_on(&DeviceId::PtxInterp);
    assert_eq!(p.stream_devices, vec![DeviceId::PtxInterp; 4]);
}

#[test]
fn stream_threads_is_a_count_of_1_to_1024() {
    assert_eq!(resolve("", TINY).expect("default").stream_threads, None);
    let p = resolve("stream_threads = 1024", TINY).expect("upper bound");
    assert_eq!(p.stream_threads, Some(1024));
    for bad in ["0", "1025"] {
        let (f, m) = err_field(&format!("stream_threads = {bad}"), TINY);
        assert_eq!(f, "stream_threads");
        assert!(m.contains("1..=1024"), "{m}");
    }
    let (f, _) = err_field("stream_threads = \"two\"", TINY);
    assert_eq!(f, "stream_threads");
}
