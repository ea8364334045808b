//! Bad input: 1,000 malformed bodies from seeded mutations of valid requests (truncations,
//! invalid UTF-8, wrong types, out-of-range and huge numbers, missing fields, deep nesting,
//! non-objects) each get a 4xx in OpenAI's error shape; the server keeps serving, no panic.

use serde_json::{json, Value};

use super::client::{post, request};
use super::Served;

const MODEL: &str = "fortune-tiny";

/// SplitMix64: a seeded generator, so a failing case can be replayed by its index.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

fn valid(rng: &mut Rng) -> (&'static str, Value) {
    if rng.below(2) == 0 {
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "Fortune says", "max_tokens": 4, "temperature": 0.5, "stop": ["\n"]}),
        )
    } else {
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": true}),
        )
    }
}

/// Values each field must refuse (raw JSON text, so huge literals stay huge).
fn wrong_values(field: &str) -> &'static [&'static str] {
    match field {
        "model" => &["5", "[]", "{}", "true", "\"gpt-4\"", "\"\""],
        "prompt" => &[
            "5",
            "{}",
            "[-1]",
            "[1.5]",
            "[\"a\",\"b\"]",
            "[99999999999]",
            "[[1],[2]]",
            "true",
            "[4096]",
            "[null]",
        ],
        "messages" => &[
            "\"hi\"",
            "[]",
            "[{}]",
            "[{\"role\":5}]",
            "[{\"role\":\"user\",\"content\":5}]",
            "[5]",
            "{}",
            "[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]",
        ],
        "max_tokens" => &[
            "0",
            "-1",
            "1.5",
            "1e20",
            "\"5\"",
            "99999999999999999999",
            "1e400",
            "[]",
            "100000",
        ],
        "temperature" => &["-0.1", "2.5", "\"hot\"", "1e309", "[]", "{}"],
        "top_p" => &["0", "-1", "1.01", "\"x\"", "[0.5]"],
        "top_k" => &["0", "-5", "2.5", "\"k\"", "1e30"],
        "seed" => &["\"s\"", "1.5", "[]", "1e40", "-99999999999999999999"],
        "stop" => &[
            "5",
            "[1]",
            "[\"\"]",
            "[\"a\",\"b\",\"c\",\"d\",\"e\"]",
            "{}",
        ],
        "stream" => &["\"yes\"", "1", "[]"],
        "stream_options" => &["5", "\"x\"", "{\"include_usage\":\"yes\"}"],
        "n" => &["2", "0", "-1", "\"1\"", "1e10"],
        _ => &["null"],
    }
}

/// One malformed body (raw bytes) for `path`.
fn mutate(rng: &mut Rng) -> (&'static str, Vec<u8>) {
    let (path, body) = valid(rng);
    let text = body.to_string();
    let bytes = text.as_bytes();
    let mut out = match rng.below(8) {
        // Truncated JSON.
        0 => bytes[..rng.below(bytes.len())].to_vec(),
        // Invalid UTF-8 inside the text.
        1 => {
            let at = 1 + rng.below(bytes.len() - 1);
            let bad: &[&[u8]] = &[
                b"\xff",
                b"\xc3",
                b"\xed\xa0\x80",
                b"\xf8\x88\x80\x80\x80",
                b"\x80",
            ];
            let insert: &[u8] = bad[rng.below(bad.len())];
            [&bytes[..at], insert, &bytes[at..]].concat()
        }
        // A field with a value it must refuse.
        2 | 3 => {
            let fields: &[&str] = if path == "/v1/completions" {
                &[
                    "model",
                    "prompt",
                    "max_tokens",
                    "temperature",
                    "top_p",
                    "top_k",
                    "seed",
                    "stop",
                    "stream",
                    "stream_options",
                    "n",
                ]
            } else {
                &[
                    "model",
                    "messages",
                    "max_tokens",
                    "temperature",
                    "top_p",
                    "n",
                    "stop",
                    "stream_options",
                ]
            };
            let field = *rng.pick(fields);
            let value = *rng.pick(wrong_values(field));
            let mut m = body.as_object().cloned().unwrap_or_default();
            m.remove(field);
            let rest = Value::Object(m).to_string();
            format!("{{\"{field}\":{value},{}", &rest[1..]).into_bytes()
        }
        // A required field missing.
        4 => {
            let mut m = body.as_object().cloned().unwrap_or_default();
            let field = if rng.below(2) == 0 {
                "model"
            } else if path == "/v1/completions" {
                "prompt"
            } else {
                "messages"
            };
            m.remove(field);
            Value::Object(m).to_string().into_bytes()
        }
        // Not an object at all.
        5 => rng
            .pick(&[
                "[]",
                "null",
                "42",
                "\"text\"",
                "",
                "   ",
                "{}",
                "{\"model\":\"fortune-tiny\"}",
            ])
            .as_bytes()
            .to_vec(),
        // Nesting past the parser's depth limit.
        6 => {
            let depth = 200 + rng.below(5000);
            format!(
                "{{\"model\":\"{MODEL}\",\"prompt\":{}1{}}}",
                "[".repeat(depth),
                "]".repeat(depth)
            )
            .into_bytes()
        }
        // A random byte replaced by a structural character, then truncated (never valid).
        _ => {
            let mut b = bytes.to_vec();
            let at = rng.below(b.len());
            b[at] = *rng.pick(&[b'{', b'}', b'"', b',', b':', b'[', 0u8]);
            b.truncate(b.len() - 1 - rng.below(3));
            b
        }
    };
    if out.len() > 100_000 {
        out.truncate(100_000);
    }
    (path, out)
}

#[test]
fn a_thousand_malformed_bodies_each_get_a_4xx() {
    let mut s = Served::start(MODEL, &[]);
    let mut rng = Rng(0x5EED_0011);
    for case in 0..1000 {
        let (path, body) = mutate(&mut rng);
        let r = request(
            s.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            &body,
        );
        assert!(
            (400..500).contains(&r.status),
            "case {case}: {path} {:?} -> {} {}",
            String::from_utf8_lossy(&body[..body.len().min(300)]),
            r.status,
            r.text()
        );
        let e = r.json();
        assert!(e["error"]["message"].is_string(), "case {case}: {e}");
        if case % 100 == 99 {
            s.assert_healthy();
        }
    }
    let ok = post(
        s.addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Hi", "max_tokens": 3}),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    s.assert_healthy();
}
