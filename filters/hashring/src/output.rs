//! Encodings of the decision for Envoy: the override-host header value and the
//! `set_envoy_filter_state` foreign-function argument for `ORIGINAL_DST` clusters.

/// Filter-state key read by Envoy's `ORIGINAL_DST` cluster.
pub const ORIGINAL_DST_KEY: &str = "envoy.network.transport_socket.original_dst_address";

/// `LifeSpan::DownstreamRequest` in Envoy's `SetEnvoyFilterStateArguments`.
const SPAN_DOWNSTREAM_REQUEST: u64 = 1;

/// The header value: chosen host, then fallbacks, comma-separated (`override_host` format).
pub fn header_value(addresses: &[&str]) -> String {
    addresses.join(",")
}

/// Serializes `envoy.source.extensions.common.wasm.SetEnvoyFilterStateArguments
/// { path = 1; value = 2; span = 3 }` (protobuf wire format, written by hand: three fields do
/// not justify a protobuf dependency in the module).
pub fn set_filter_state_args(path: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + value.len() + 8);
    put_bytes(&mut out, 1, path.as_bytes());
    put_bytes(&mut out, 2, value.as_bytes());
    out.push(3 << 3); // field 3, varint
    put_varint(&mut out, SPAN_DOWNSTREAM_REQUEST);
    out
}

fn put_bytes(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lists_chosen_then_fallbacks() {
        assert_eq!(
            header_value(&["10.0.0.2:8080", "10.0.0.3:8080"]),
            "10.0.0.2:8080,10.0.0.3:8080"
        );
    }

    #[test]
    fn filter_state_args_wire_format() {
        let b = set_filter_state_args("k", "1.2.3.4:80");
        let mut want = vec![0x0a, 1, b'k', 0x12, 10];
        want.extend_from_slice(b"1.2.3.4:80");
        want.extend_from_slice(&[0x18, 1]);
        assert_eq!(b, want);
        // Long keys need a multi-byte length varint.
        let long = "x".repeat(200);
        let b = set_filter_state_args(&long, "v");
        assert_eq!(&b[..3], &[0x0a, 0xc8, 0x01]);
    }
}
