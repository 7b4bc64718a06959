//! NDJSON records (`full/simplified/*.ndjson`, `full/raw/*.ndjson`): one JSON object per line,
//! `{"word","countrycode","timestamp","recognized","key_id","drawing":[[[x..],[y..](,[t..])],..]}`.

use std::borrow::Cow;
use std::io::{self, BufRead};

use serde::Deserialize;

use crate::drawing::{Drawing, Ink, Stroke};
use crate::validate::{Reject, RejectReason};

/// Google's timestamp format: `2017-03-02 23:25:10.07453 UTC`.
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f";

pub(crate) fn next_line<R: BufRead>(
    r: &mut R,
) -> io::Result<Option<(Vec<u8>, bool, Option<Reject>)>> {
    super::read_line_limited(r)
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    word: Cow<'a, str>,
    #[serde(borrow)]
    countrycode: Cow<'a, str>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    recognized: bool,
    key_id: KeyId<'a>,
    drawing: Vec<Vec<Vec<f32>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum KeyId<'a> {
    Num(u64),
    Str(#[serde(borrow)] Cow<'a, str>),
}

/// Parses Google's timestamp (also accepts RFC 3339) into UTC seconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let t = s.trim();
    let t = t.strip_suffix(" UTC").unwrap_or(t);
    if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(t, TIMESTAMP_FORMAT) {
        return Some(dt.and_utc().timestamp());
    }
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|d| d.timestamp())
}

/// Formats UTC seconds the way Google's files do (`2017-03-02 23:25:10.00000 UTC`; whole
/// seconds, so the fraction is zero).
pub fn format_timestamp(secs: i64) -> String {
    let dt = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    format!("{}.00000 UTC", dt.format("%Y-%m-%d %H:%M:%S"))
}

/// Parses one line into a drawing (geometry is validated separately by `validate`).
pub fn parse_line(line: &[u8]) -> Result<Drawing, Reject> {
    let rec: Record = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return Err(diagnose(line, e)),
    };
    let key_id = match rec.key_id {
        KeyId::Num(n) => n,
        KeyId::Str(s) => s.parse::<u64>().map_err(|_| {
            Reject::new(
                RejectReason::BadKeyId,
                format!("key_id {s:?} is not an unsigned integer"),
            )
        })?,
    };
    let timestamp = parse_timestamp(&rec.timestamp).ok_or_else(|| {
        Reject::new(
            RejectReason::BadTimestamp,
            format!("timestamp {:?}", rec.timestamp),
        )
    })?;
    let mut strokes = Vec::with_capacity(rec.drawing.len());
    for (i, mut arrays) in rec.drawing.into_iter().enumerate() {
        if arrays.len() != 2 && arrays.len() != 3 {
            return Err(Reject::new(
                RejectReason::LengthMismatch,
                format!(
                    "stroke {i} has {} arrays, expected [x, y] or [x, y, t]",
                    arrays.len()
                ),
            ));
        }
        let t = if arrays.len() == 3 {
            arrays.pop()
        } else {
            None
        };
        let y = arrays.pop().unwrap_or_default();
        let x = arrays.pop().unwrap_or_default();
        strokes.push(Stroke { x, y, t });
    }
    Ok(Drawing {
        key_id,
        word: rec.word.into_owned(),
        countrycode: rec.countrycode.into_owned(),
        timestamp,
        recognized: rec.recognized,
        ink: Ink::Strokes(strokes),
    })
}

const FIELDS: [(&str, &str); 6] = [
    ("word", "string"),
    ("countrycode", "string"),
    ("timestamp", "string"),
    ("recognized", "boolean"),
    ("key_id", "string of digits"),
    ("drawing", "array of strokes"),
];

/// Slow path for bad lines: find which field is wrong, so the reject names it.
fn diagnose(line: &[u8], err: serde_json::Error) -> Reject {
    let v: serde_json::Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(_) => return Reject::new(RejectReason::InvalidJson, err.to_string()),
    };
    let Some(obj) = v.as_object() else {
        return Reject::new(RejectReason::WrongType, "line is not a JSON object");
    };
    for (name, want) in FIELDS {
        let Some(f) = obj.get(name) else {
            return Reject::new(
                RejectReason::MissingField,
                format!("field {name:?} is missing"),
            );
        };
        let ok = match name {
            "recognized" => f.is_boolean(),
            "key_id" => f.is_string() || f.is_u64(),
            "drawing" => f.is_array(),
            _ => f.is_string(),
        };
        if !ok {
            return Reject::new(
                RejectReason::WrongType,
                format!("field {name:?} should be a {want}, got {}", short(f)),
            );
        }
    }
    // The drawing has the wrong shape somewhere: find the first bad element.
    if let Some(strokes) = obj.get("drawing").and_then(|d| d.as_array()) {
        for (i, s) in strokes.iter().enumerate() {
            let Some(arrays) = s.as_array() else {
                return Reject::new(
                    RejectReason::WrongType,
                    format!("drawing stroke {i} should be an array, got {}", short(s)),
                );
            };
            for (j, a) in arrays.iter().enumerate() {
                let Some(vals) = a.as_array() else {
                    return Reject::new(
                        RejectReason::WrongType,
                        format!(
                            "drawing stroke {i} array {j} should be an array of numbers, got {}",
                            short(a)
                        ),
                    );
                };
                if let Some(bad) = vals.iter().find(|v| !v.is_number()) {
                    return Reject::new(
                        RejectReason::WrongType,
                        format!(
                            "drawing stroke {i} array {j} holds {}, expected numbers",
                            short(bad)
                        ),
                    );
                }
            }
        }
    }
    Reject::new(RejectReason::WrongType, err.to_string())
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(37).map_or(s.len(), |c| c.0)]
        )
    } else {
        s
    }
}

/// One line of Google's NDJSON format as [`to_line`], in the raw (`[x, y, t]` strokes) or, with
/// `simplified`, the simplified layout (`[x, y]` only: times are dropped; the caller passes
/// already simplified strokes).
pub fn to_line_as(d: &Drawing, simplified: bool) -> String {
    match (&d.ink, simplified) {
        (Ink::Strokes(strokes), true) if strokes.iter().any(|s| s.t.is_some()) => {
            let strokes = strokes
                .iter()
                .map(|s| Stroke {
                    t: None,
                    ..s.clone()
                })
                .collect();
            to_line(&Drawing {
                ink: Ink::Strokes(strokes),
                ..d.clone()
            })
        }
        _ => to_line(d),
    }
}

/// Serialises a drawing as one line of Google's NDJSON format (raw when strokes carry `t`).
pub fn to_line(d: &Drawing) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(256);
    out.push_str("{\"word\":");
    out.push_str(&serde_json::to_string(&d.word).unwrap_or_default());
    out.push_str(",\"countrycode\":");
    out.push_str(&serde_json::to_string(&d.countrycode).unwrap_or_default());
    let _ = write!(
        out,
        ",\"timestamp\":\"{}\",\"recognized\":{},\"key_id\":\"{}\",\"drawing\":[",
        format_timestamp(d.timestamp),
        d.recognized,
        d.key_id
    );
    if let Ink::Strokes(strokes) = &d.ink {
        for (i, s) in strokes.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('[');
            push_nums(&mut out, &s.x);
            out.push(',');
            push_nums(&mut out, &s.y);
            if let Some(t) = &s.t {
                out.push(',');
                push_nums(&mut out, t);
            }
            out.push(']');
        }
    }
    out.push_str("]}");
    out
}

fn push_nums(out: &mut String, v: &[f32]) {
    use std::fmt::Write;
    out.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if !x.is_finite() {
            out.push_str("null");
        } else if x.fract() == 0.0 && x.abs() < 1e15 {
            let _ = write!(out, "{}", *x as i64);
        } else {
            // Rust's float Display is the shortest round-trip decimal, never exponent notation.
            let _ = write!(out, "{x}");
        }
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"word":"cat","countrycode":"VE","timestamp":"2017-03-02 23:25:10.07453 UTC","recognized":true,"key_id":"5201136883597312","drawing":[[[130,113],[72,40]],[[1.5,2],[3,4],[0,16]]]}"#;

    #[test]
    fn parses_google_lines() {
        let d = parse_line(GOOD.as_bytes()).unwrap();
        assert_eq!(d.key_id, 5201136883597312);
        assert_eq!(d.timestamp, 1488497110);
        let s = d.strokes().unwrap();
        assert_eq!(s[0].x, vec![130., 113.]);
        assert_eq!(s[1].t, Some(vec![0., 16.]));
        let back = parse_line(to_line(&d).as_bytes()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn rejects_name_the_field() {
        let cases = [
            ("{\"word\":", RejectReason::InvalidJson, "EOF"),
            (
                r#"{"countrycode":"VE","timestamp":"2017-03-02 23:25:10 UTC","recognized":true,"key_id":"1","drawing":[]}"#,
                RejectReason::MissingField,
                "\"word\"",
            ),
            (
                r#"{"word":"cat","countrycode":"VE","timestamp":"2017-03-02 23:25:10 UTC","recognized":"yes","key_id":"1","drawing":[]}"#,
                RejectReason::WrongType,
                "\"recognized\"",
            ),
            (
                r#"{"word":"cat","countrycode":"VE","timestamp":"2017-03-02 23:25:10 UTC","recognized":true,"key_id":"1","drawing":[[[1],["a"]]]}"#,
                RejectReason::WrongType,
                "stroke 0 array 1",
            ),
            (
                r#"{"word":"cat","countrycode":"VE","timestamp":"yesterday","recognized":true,"key_id":"1","drawing":[]}"#,
                RejectReason::BadTimestamp,
                "yesterday",
            ),
            (
                r#"{"word":"cat","countrycode":"VE","timestamp":"2017-03-02 23:25:10 UTC","recognized":true,"key_id":"-4","drawing":[]}"#,
                RejectReason::BadKeyId,
                "-4",
            ),
            (
                r#"{"word":"cat","countrycode":"VE","timestamp":"2017-03-02 23:25:10 UTC","recognized":true,"key_id":"1","drawing":[[[1]]]}"#,
                RejectReason::LengthMismatch,
                "1 arrays",
            ),
            ("[1,2]", RejectReason::WrongType, "not a JSON object"),
        ];
        for (line, reason, needle) in cases {
            let r = parse_line(line.as_bytes()).unwrap_err();
            assert_eq!(r.reason, reason, "{line}: {r}");
            assert!(r.detail.contains(needle), "{line}: {r}");
        }
    }
}
