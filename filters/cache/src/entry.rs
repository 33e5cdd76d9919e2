//! A stored response and its compact binary encoding in a shared-data slot.

use crate::rfc::{AgeClock, Field};

const VERSION: u8 = 2;

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// The full primary key (compared on read: a hash collision never yields a false hit).
    pub key: String,
    /// Path of the request, for prefix purges.
    pub path: String,
    /// The secondary key: the varied request headers and their values when stored.
    pub vary: Vec<(String, Option<String>)>,
    pub status: u16,
    /// Response headers as stored (no hop-by-hop fields, no `Age`, no cache status fields).
    pub headers: Vec<Field>,
    pub body: Vec<u8>,
    pub clock: AgeClock,
    /// Purge tags from `Cache-Tag` / `Surrogate-Key`.
    pub tags: Vec<String>,
    /// The upstream host that served it (Envoy's `upstream.address`; empty if unknown): a
    /// background refresh asks the same host, as the hashring filter would choose it.
    pub upstream_host: String,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

impl Entry {
    /// Encodes the entry tagged with the slot generation it was written for.
    pub fn encode(&self, generation: u32) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(self.encoded_len_hint()));
        w.u8(VERSION);
        w.u32(generation);
        w.bytes(self.key.as_bytes());
        w.bytes(self.path.as_bytes());
        w.u32(self.vary.len() as u32);
        for (n, v) in &self.vary {
            w.bytes(n.as_bytes());
            match v {
                Some(v) => {
                    w.u8(1);
                    w.bytes(v.as_bytes());
                }
                None => w.u8(0),
            }
        }
        w.u16(self.status);
        w.u32(self.headers.len() as u32);
        for (n, v) in &self.headers {
            w.bytes(n.as_bytes());
            w.bytes(v);
        }
        w.u64(self.clock.initial_age);
        w.u64(self.clock.response_time);
        w.u32(self.tags.len() as u32);
        for t in &self.tags {
            w.bytes(t.as_bytes());
        }
        w.bytes(self.upstream_host.as_bytes());
        w.bytes(&self.body);
        w.0
    }

    fn encoded_len_hint(&self) -> usize {
        64 + self.key.len()
            + self.path.len()
            + self.body.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 8)
                .sum::<usize>()
    }

    /// Decodes an entry and its generation; `None` for an empty (freed) or corrupt slot.
    pub fn decode(data: &[u8]) -> Option<(u32, Entry)> {
        let mut r = Reader(data);
        if r.u8()? != VERSION {
            return None;
        }
        let generation = r.u32()?;
        let key = r.string()?;
        let path = r.string()?;
        let n = r.u32()? as usize;
        let mut vary = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let name = r.string()?;
            let value = match r.u8()? {
                1 => Some(r.string()?),
                _ => None,
            };
            vary.push((name, value));
        }
        let status = r.u16()?;
        let n = r.u32()? as usize;
        let mut headers = Vec::with_capacity(n.min(256));
        for _ in 0..n {
            headers.push((r.string()?, r.bytes()?.to_vec()));
        }
        let clock = AgeClock {
            initial_age: r.u64()?,
            response_time: r.u64()?,
        };
        let n = r.u32()? as usize;
        let mut tags = Vec::with_capacity(n.min(256));
        for _ in 0..n {
            tags.push(r.string()?);
        }
        let upstream_host = r.string()?;
        let body = r.bytes()?.to_vec();
        Some((
            generation,
            Entry {
                key,
                path,
                vary,
                status,
                headers,
                body,
                clock,
                tags,
                upstream_host,
            },
        ))
    }

    /// The bytes this decoded entry holds: its body, header names and values, keys, tags and
    /// host, plus [`Entry::OVERHEAD`] (what bounds a worker's L1, [`crate::l1`]).
    pub fn held_bytes(&self) -> u64 {
        let pairs = self.headers.iter().map(|(n, v)| n.len() + v.len());
        let vary = self
            .vary
            .iter()
            .map(|(n, v)| n.len() + v.as_ref().map_or(0, String::len));
        let fields: usize = pairs
            .chain(vary)
            .chain(self.tags.iter().map(String::len))
            .sum();
        let text = self.key.len() + self.path.len() + self.upstream_host.len();
        (self.body.len() + fields + text) as u64 + Self::OVERHEAD
    }

    /// Bookkeeping counted per decoded entry: the struct, its vectors' headers, the L1's node.
    pub const OVERHEAD: u64 = 256;

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let e = Entry {
            key: "GET\nexample.com\n/a".into(),
            path: "/a".into(),
            vary: vec![
                ("accept".into(), Some("text/html".into())),
                ("x".into(), None),
            ],
            status: 200,
            headers: vec![
                ("content-type".into(), b"text/plain".to_vec()),
                ("x-obs".into(), b"caf\xe9".to_vec()),
            ],
            body: b"hello".to_vec(),
            clock: AgeClock {
                initial_age: 5,
                response_time: 99,
            },
            tags: vec!["t1".into()],
            upstream_host: "10.0.0.7:8080".into(),
        };
        let bytes = e.encode(7);
        assert_eq!(Entry::decode(&bytes), Some((7, e)));
        assert_eq!(Entry::decode(&[]), None);
        assert_eq!(Entry::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(Entry::decode(&[9, 0, 0]), None);
    }
}
