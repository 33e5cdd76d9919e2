//! Hand-written protobuf codec for `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`
//! (api/envoy/service/ratelimit/v3/rls.proto and
//! api/envoy/extensions/common/ratelimit/v3/ratelimit.proto): encodes `RateLimitRequest`,
//! decodes `RateLimitResponse`. The decoder never panics and never trusts a length: truncated
//! or garbage input is an error. Unknown fields are skipped, as protobuf requires.
//!
//! ```text
//! RateLimitRequest    { string domain = 1; repeated RateLimitDescriptor descriptors = 2; uint32 hits_addend = 3; }
//! RateLimitDescriptor { repeated Entry entries = 1; RateLimitOverride limit = 2; UInt64Value hits_addend = 3; }
//! Entry               { string key = 1; string value = 2; }
//! RateLimitResponse   { Code overall_code = 1; repeated DescriptorStatus statuses = 2;
//!                       repeated HeaderValue response_headers_to_add = 3; repeated HeaderValue request_headers_to_add = 4;
//!                       bytes raw_body = 5; Struct dynamic_metadata = 6; Quota quota = 7; }
//! DescriptorStatus    { Code code = 1; RateLimit current_limit = 2; uint32 limit_remaining = 3;
//!                       Duration duration_until_reset = 4; Quota quota = 5; }
//! RateLimit           { uint32 requests_per_unit = 1; Unit unit = 2; string name = 3; }
//! HeaderValue         { string key = 1; string value = 2; bytes raw_value = 3; }
//! Duration            { int64 seconds = 1; int32 nanos = 2; }
//! ```

/// The gRPC service and method names.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// Most headers taken from one answer (`response_headers_to_add`).
pub const MAX_HEADERS: usize = 32;
/// Most descriptor statuses taken from one answer.
pub const MAX_STATUSES: usize = 64;
/// Nesting is fixed by the schema; this bounds the work on hostile input.
const MAX_HEADER_BYTES: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub domain: String,
    pub descriptors: Vec<Descriptor>,
    pub hits_addend: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Code {
    #[default]
    Unknown,
    Ok,
    OverLimit,
}

impl Code {
    fn from_wire(v: u64) -> Code {
        match v {
            1 => Code::Ok,
            2 => Code::OverLimit,
            _ => Code::Unknown,
        }
    }
}

/// `RateLimitResponse.RateLimit.Unit` as a length in seconds (`None`: unknown).
pub fn unit_seconds(unit: u64) -> Option<u64> {
    match unit {
        1 => Some(1),
        2 => Some(60),
        3 => Some(3600),
        4 => Some(86_400),
        5 => Some(30 * 86_400),
        6 => Some(365 * 86_400),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CurrentLimit {
    pub name: String,
    pub requests_per_unit: u32,
    /// The wire value of the unit enum (see [`unit_seconds`]).
    pub unit: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescriptorStatus {
    pub code: Code,
    pub current_limit: Option<CurrentLimit>,
    pub limit_remaining: u32,
    /// `duration_until_reset` in nanoseconds (negative durations read as 0).
    pub duration_until_reset_ns: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub overall_code: Code,
    pub statuses: Vec<DescriptorStatus>,
    /// `response_headers_to_add`, values as bytes (`raw_value` wins over `value`).
    pub response_headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    BadVarint,
    BadWireType(u8),
    BadFieldNumber,
    WrongWireType { field: u32 },
    BadUtf8,
}

// ---- encoding --------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Encodes a `RateLimitRequest`. `hits_addend` 0 is left out (the service then counts 1).
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    put_bytes(&mut out, 1, req.domain.as_bytes());
    for d in &req.descriptors {
        let mut desc = Vec::new();
        for (k, v) in &d.entries {
            let mut entry = Vec::with_capacity(k.len() + v.len() + 4);
            put_bytes(&mut entry, 1, k.as_bytes());
            put_bytes(&mut entry, 2, v.as_bytes());
            put_bytes(&mut desc, 1, &entry);
        }
        put_bytes(&mut out, 2, &desc);
    }
    if req.hits_addend != 0 {
        put_tag(&mut out, 3, 0);
        put_varint(&mut out, u64::from(req.hits_addend));
    }
    out
}

// ---- decoding --------------------------------------------------------------------------------

/// One field's value as read from the wire.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(DecodeError::BadVarint);
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::BadVarint)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    /// The next field: number and value.
    fn field(&mut self) -> Result<(u32, Value<'a>), DecodeError> {
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(DecodeError::BadFieldNumber);
        }
        let number = number as u32;
        let value = match (key & 7) as u8 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            // Groups (3, 4) are not used by this schema; anything else is garbage.
            w => return Err(DecodeError::BadWireType(w)),
        };
        Ok((number, value))
    }
}

fn varint_of(field: u32, v: Value<'_>) -> Result<u64, DecodeError> {
    match v {
        Value::Varint(x) => Ok(x),
        _ => Err(DecodeError::WrongWireType { field }),
    }
}

fn bytes_of(field: u32, v: Value<'_>) -> Result<&[u8], DecodeError> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(DecodeError::WrongWireType { field }),
    }
}

fn text_of(field: u32, v: Value<'_>) -> Result<String, DecodeError> {
    let b = bytes_of(field, v)?;
    std::str::from_utf8(b)
        .map(str::to_string)
        .map_err(|_| DecodeError::BadUtf8)
}

/// Decodes a `RateLimitResponse`. Never panics; any malformed input is an error.
pub fn decode_response(buf: &[u8]) -> Result<Response, DecodeError> {
    let mut r = Reader::new(buf);
    let mut out = Response::default();
    while !r.done() {
        match r.field()? {
            (1, v) => out.overall_code = Code::from_wire(varint_of(1, v)?),
            (2, v) => {
                let s = decode_status(bytes_of(2, v)?)?;
                if out.statuses.len() < MAX_STATUSES {
                    out.statuses.push(s);
                }
            }
            (3, v) => {
                let h = decode_header(bytes_of(3, v)?)?;
                let total: usize = out
                    .response_headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum();
                if let Some((k, v)) = h {
                    if out.response_headers.len() < MAX_HEADERS
                        && total + k.len() + v.len() <= MAX_HEADER_BYTES
                    {
                        out.response_headers.push((k, v));
                    }
                }
            }
            // request_headers_to_add, raw_body, dynamic_metadata, quota: not used.
            (_, _) => {}
        }
    }
    Ok(out)
}

fn decode_status(buf: &[u8]) -> Result<DescriptorStatus, DecodeError> {
    let mut r = Reader::new(buf);
    let mut s = DescriptorStatus::default();
    while !r.done() {
        match r.field()? {
            (1, v) => s.code = Code::from_wire(varint_of(1, v)?),
            (2, v) => s.current_limit = Some(decode_limit(bytes_of(2, v)?)?),
            (3, v) => s.limit_remaining = varint_of(3, v)? as u32,
            (4, v) => s.duration_until_reset_ns = Some(decode_duration(bytes_of(4, v)?)?),
            (_, _) => {}
        }
    }
    Ok(s)
}

fn decode_limit(buf: &[u8]) -> Result<CurrentLimit, DecodeError> {
    let mut r = Reader::new(buf);
    let mut l = CurrentLimit::default();
    while !r.done() {
        match r.field()? {
            (1, v) => l.requests_per_unit = varint_of(1, v)? as u32,
            (2, v) => l.unit = varint_of(2, v)?,
            (3, v) => l.name = text_of(3, v)?,
            (_, _) => {}
        }
    }
    Ok(l)
}

/// `google.protobuf.Duration` in nanoseconds, saturating; negative reads as 0.
fn decode_duration(buf: &[u8]) -> Result<u64, DecodeError> {
    let mut r = Reader::new(buf);
    let (mut secs, mut nanos) = (0i64, 0i32);
    while !r.done() {
        match r.field()? {
            // int64/int32 are two's complement varints.
            (1, v) => secs = varint_of(1, v)? as i64,
            (2, v) => nanos = varint_of(2, v)? as i32,
            (_, _) => {}
        }
    }
    if secs < 0 || nanos < 0 {
        return Ok(0);
    }
    Ok((secs as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(nanos as u64))
}

/// A `HeaderValue`; `None` when the name is not a valid lowercase-able header token.
fn decode_header(buf: &[u8]) -> Result<Option<(String, Vec<u8>)>, DecodeError> {
    let mut r = Reader::new(buf);
    let (mut key, mut value, mut raw): (String, Vec<u8>, Option<Vec<u8>>) =
        (String::new(), Vec::new(), None);
    while !r.done() {
        match r.field()? {
            (1, v) => key = text_of(1, v)?,
            (2, v) => value = bytes_of(2, v)?.to_vec(),
            (3, v) => raw = Some(bytes_of(3, v)?.to_vec()),
            (_, _) => {}
        }
    }
    let value = raw.unwrap_or(value);
    let key_ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    // Header values may not carry CR, LF or NUL.
    let value_ok = !value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0));
    if !key_ok || !value_ok {
        return Ok(None);
    }
    Ok(Some((key.to_ascii_lowercase(), value)))
}

/// Encodes a `RateLimitResponse` (for tests and fakes of the service).
pub fn encode_response(resp: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    let code = |c: Code| match c {
        Code::Unknown => 0u64,
        Code::Ok => 1,
        Code::OverLimit => 2,
    };
    if resp.overall_code != Code::Unknown {
        put_tag(&mut out, 1, 0);
        put_varint(&mut out, code(resp.overall_code));
    }
    for s in &resp.statuses {
        let mut b = Vec::new();
        put_tag(&mut b, 1, 0);
        put_varint(&mut b, code(s.code));
        if let Some(l) = &s.current_limit {
            let mut lb = Vec::new();
            put_tag(&mut lb, 1, 0);
            put_varint(&mut lb, u64::from(l.requests_per_unit));
            put_tag(&mut lb, 2, 0);
            put_varint(&mut lb, l.unit);
            if !l.name.is_empty() {
                put_bytes(&mut lb, 3, l.name.as_bytes());
            }
            put_bytes(&mut b, 2, &lb);
        }
        put_tag(&mut b, 3, 0);
        put_varint(&mut b, u64::from(s.limit_remaining));
        if let Some(ns) = s.duration_until_reset_ns {
            let mut db = Vec::new();
            put_tag(&mut db, 1, 0);
            put_varint(&mut db, ns / 1_000_000_000);
            put_tag(&mut db, 2, 0);
            put_varint(&mut db, ns % 1_000_000_000);
            put_bytes(&mut b, 4, &db);
        }
        put_bytes(&mut out, 2, &b);
    }
    for (k, v) in &resp.response_headers {
        let mut hb = Vec::new();
        put_bytes(&mut hb, 1, k.as_bytes());
        put_bytes(&mut hb, 2, v);
        put_bytes(&mut out, 3, &hb);
    }
    out
}

/// Decodes a `RateLimitRequest` (for tests and fakes of the service).
pub fn decode_request(buf: &[u8]) -> Result<Request, DecodeError> {
    let mut r = Reader::new(buf);
    let mut out = Request::default();
    while !r.done() {
        match r.field()? {
            (1, v) => out.domain = text_of(1, v)?,
            (2, v) => {
                let mut d = Descriptor::default();
                let mut dr = Reader::new(bytes_of(2, v)?);
                while !dr.done() {
                    if let (1, ev) = dr.field()? {
                        let mut er = Reader::new(bytes_of(1, ev)?);
                        let (mut k, mut val) = (String::new(), String::new());
                        while !er.done() {
                            match er.field()? {
                                (1, x) => k = text_of(1, x)?,
                                (2, x) => val = text_of(2, x)?,
                                _ => {}
                            }
                        }
                        d.entries.push((k, val));
                    }
                }
                out.descriptors.push(d);
            }
            (3, v) => out.hits_addend = varint_of(3, v)? as u32,
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            domain: "switchyard".into(),
            descriptors: vec![Descriptor {
                entries: vec![
                    ("remote_address".into(), "10.0.0.1".into()),
                    ("x-user-id".into(), "alice".into()),
                ],
            }],
            hits_addend: 5,
        }
    }

    #[test]
    fn request_bytes_match_protoc() {
        // protoc --encode=envoy.service.ratelimit.v3.RateLimitRequest of
        // domain: "d" descriptors { entries { key: "k" value: "v" } } hits_addend: 2
        let req = Request {
            domain: "d".into(),
            descriptors: vec![Descriptor {
                entries: vec![("k".into(), "v".into())],
            }],
            hits_addend: 2,
        };
        assert_eq!(
            encode_request(&req),
            [
                0x0a, 0x01, b'd', 0x12, 0x08, 0x0a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v', 0x18,
                0x02
            ]
        );
    }

    #[test]
    fn request_roundtrips_and_hits_addend_zero_is_omitted() {
        let req = request();
        assert_eq!(decode_request(&encode_request(&req)).unwrap(), req);
        let mut one = request();
        one.hits_addend = 0;
        let bytes = encode_request(&one);
        assert!(!bytes.contains(&0x18));
        assert_eq!(decode_request(&bytes).unwrap().hits_addend, 0);
    }

    fn response() -> Response {
        Response {
            overall_code: Code::OverLimit,
            statuses: vec![DescriptorStatus {
                code: Code::OverLimit,
                current_limit: Some(CurrentLimit {
                    name: "per-user".into(),
                    requests_per_unit: 10,
                    unit: 2,
                }),
                limit_remaining: 0,
                duration_until_reset_ns: Some(12_500_000_000),
            }],
            response_headers: vec![("x-ratelimit-service".into(), b"rls".to_vec())],
        }
    }

    #[test]
    fn response_roundtrips() {
        let r = response();
        assert_eq!(decode_response(&encode_response(&r)).unwrap(), r);
    }

    #[test]
    fn response_from_protoc_bytes() {
        // overall_code: OK
        // statuses { code: OK current_limit { requests_per_unit: 3 unit: SECOND }
        //            limit_remaining: 2 duration_until_reset { seconds: 1 } }
        // response_headers_to_add { header { key: "X-A" value: "b" } } -- HeaderValue direct
        let bytes = [
            0x08, 0x01, // overall_code
            0x12, 0x0e, // statuses, 14 bytes
            0x08, 0x01, // code
            0x12, 0x04, 0x08, 0x03, 0x10, 0x01, // current_limit
            0x18, 0x02, // limit_remaining
            0x22, 0x02, 0x08, 0x01, // duration_until_reset
            0x1a, 0x08, 0x0a, 0x03, b'X', b'-', b'A', 0x12, 0x01, b'b', // header
            0x2a, 0x02, b'h', b'i', // raw_body (ignored)
            0x38, 0x01, // unknown varint field 7 (quota is a message; skipped anyway)
        ];
        let r = decode_response(&bytes).unwrap();
        assert_eq!(r.overall_code, Code::Ok);
        assert_eq!(r.statuses.len(), 1);
        let s = &r.statuses[0];
        assert_eq!(s.code, Code::Ok);
        assert_eq!(
            s.current_limit,
            Some(CurrentLimit {
                name: String::new(),
                requests_per_unit: 3,
                unit: 1
            })
        );
        assert_eq!(s.limit_remaining, 2);
        assert_eq!(s.duration_until_reset_ns, Some(1_000_000_000));
        assert_eq!(r.response_headers, vec![("x-a".into(), b"b".to_vec())]);
    }

    #[test]
    fn empty_response_is_unknown() {
        assert_eq!(decode_response(&[]).unwrap().overall_code, Code::Unknown);
    }

    #[test]
    fn raw_value_wins_and_bad_headers_are_dropped() {
        let mut b = Vec::new();
        let mut h = Vec::new();
        put_bytes(&mut h, 1, b"x-raw");
        put_bytes(&mut h, 2, b"text");
        put_bytes(&mut h, 3, b"\xe9raw");
        put_bytes(&mut b, 3, &h);
        let mut bad = Vec::new();
        put_bytes(&mut bad, 1, b"x-bad");
        put_bytes(&mut bad, 2, b"a\r\nset-cookie: x");
        put_bytes(&mut b, 3, &bad);
        let mut bad_name = Vec::new();
        put_bytes(&mut bad_name, 1, b"bad name");
        put_bytes(&mut b, 3, &bad_name);
        let r = decode_response(&b).unwrap();
        assert_eq!(
            r.response_headers,
            vec![("x-raw".into(), b"\xe9raw".to_vec())]
        );
    }

    #[test]
    fn negative_and_huge_durations_saturate() {
        let mut d = Vec::new();
        put_tag(&mut d, 1, 0);
        put_varint(&mut d, (-5i64) as u64);
        assert_eq!(decode_duration(&d).unwrap(), 0);
        let mut d = Vec::new();
        put_tag(&mut d, 1, 0);
        put_varint(&mut d, i64::MAX as u64);
        assert_eq!(decode_duration(&d).unwrap(), u64::MAX);
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let full = encode_response(&response());
        for n in 0..full.len() {
            // A prefix may end on a field boundary and decode (fewer fields); it must never
            // panic, and a cut inside a field must be an error.
            let _ = decode_response(&full[..n]);
        }
        // Cut inside the first length-delimited field (statuses).
        assert_eq!(decode_response(&full[..4]), Err(DecodeError::Truncated));
        let req = encode_request(&request());
        for n in 0..req.len() {
            let _ = decode_request(&req[..n]);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let cases: [&[u8]; 8] = [
            &[0x07],       // wire type 7
            &[0x0b],       // start group
            &[0x00, 0x01], // field number 0
            &[0x08],       // varint missing
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ], // 10-byte overflow
            &[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f], // length beyond the buffer
            &[0x0a, 0x01], // overall_code as bytes
            &[0x08, 0x01, 0x1a, 0x02, 0x0a, 0x05], // header key longer than its message
        ];
        for c in cases {
            assert!(decode_response(c).is_err(), "{c:?}");
        }
        // A status with a non-UTF-8 limit name is an error.
        let mut l = Vec::new();
        put_bytes(&mut l, 3, b"\xff");
        let mut s = Vec::new();
        put_bytes(&mut s, 2, &l);
        let mut b = Vec::new();
        put_bytes(&mut b, 2, &s);
        assert_eq!(decode_response(&b), Err(DecodeError::BadUtf8));
    }

    #[test]
    fn pseudo_random_input_never_panics() {
        // xorshift; deterministic.
        let mut rng = switchyard_core::rng::XorShift::new(0x9e37_79b9_7f4a_7c15);
        let seed = encode_response(&response());
        for round in 0..20_000 {
            let mut buf = if round % 2 == 0 {
                seed.clone()
            } else {
                Vec::new()
            };
            let len = rng.below(64) as usize;
            for _ in 0..len {
                let x = rng.next_u64();
                if buf.is_empty() || x.is_multiple_of(3) {
                    buf.push(x as u8);
                } else {
                    let i = (x as usize / 3) % buf.len();
                    buf[i] = (x >> 8) as u8;
                }
            }
            let _ = decode_response(&buf);
            let _ = decode_request(&buf);
        }
    }

    #[test]
    fn limits_on_headers_and_statuses() {
        let mut r = Response {
            overall_code: Code::Ok,
            ..Default::default()
        };
        for i in 0..100 {
            r.response_headers.push((format!("x-h{i}"), b"v".to_vec()));
            r.statuses.push(DescriptorStatus::default());
        }
        let d = decode_response(&encode_response(&r)).unwrap();
        assert_eq!(d.response_headers.len(), MAX_HEADERS);
        assert_eq!(d.statuses.len(), MAX_STATUSES);
    }
}
