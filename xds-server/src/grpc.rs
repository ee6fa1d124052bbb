//! gRPC framing of the ADS streams, done here rather than by tonic's codec
//! (tonic still does HTTP/2, routing, TLS and timeouts).
//!
//! Tonic's codec keeps, for as long as a stream lives, an encode buffer as
//! large as the largest response it sent and a decode buffer as large as
//! the largest request it read: at 5,000 clusters that is about a megabyte
//! per stream, most of a stream's memory. Here each response is framed in
//! buffers of its own that are freed once sent, and a large request's
//! buffer is freed once it is decoded.
//!
//! It also lets a state-of-the-world response share its resource list: the
//! list is encoded once per view (see [`crate::share::View`]) and every
//! stream sends that same buffer, framed by a few bytes of its own. The
//! bytes on the wire are exactly what prost would encode for the message.

use crate::cache::Resource;
use bytes::{Buf, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use http_body::{Body as _, Frame};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codegen::http::HeaderMap;

/// Requests larger than this end the stream.
pub(crate) const MAX_REQUEST: usize = 64 << 20;
/// Responses larger than this end the stream instead of going out.
pub(crate) const MAX_RESPONSE: usize = 256 << 20;
/// The gRPC message prefix: a compression flag and a 32-bit length.
const PREFIX: usize = 5;
/// A request buffer grown past this is freed once empty rather than kept
/// for the next request (ACKs are small; a subscription to thousands of
/// names is not, and is rare).
const KEEP: usize = 16 << 10;

/// One response as gRPC message bytes, in chunks sent one after another.
#[derive(Debug)]
pub(crate) struct Encoded(Vec<Bytes>);

impl Encoded {
    /// Frames the message whose encoding is the concatenation of `parts`.
    fn framed(parts: Vec<Bytes>) -> Self {
        let len: usize = parts.iter().map(Bytes::len).sum();
        let mut chunks = Vec::with_capacity(parts.len() + 1);
        let mut prefix = [0u8; PREFIX];
        // Oversized messages are refused before they go out (see `len`);
        // the saturated length is never sent.
        prefix[1..].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        chunks.push(Bytes::copy_from_slice(&prefix));
        chunks.extend(parts);
        Self(chunks)
    }

    /// The encoded message's length, without the gRPC prefix.
    pub(crate) fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum::<usize>() - PREFIX
    }
}

/// `resources` as the repeated `Any` field 2 of a `DiscoveryResponse`.
pub(crate) fn any_list<'a>(resources: impl Iterator<Item = &'a Any>) -> Bytes {
    let resources: Vec<&Any> = resources.collect();
    let len: usize = resources
        .iter()
        .map(|a| prost::encoding::message::encoded_len(2, *a))
        .sum();
    let mut buf = Vec::with_capacity(len);
    for a in resources {
        prost::encoding::message::encode(2, a, &mut buf);
    }
    Bytes::from(buf)
}

/// A state-of-the-world response around an encoded resource list (from
/// [`any_list`]).
pub(crate) fn sotw(version: &str, resources: Bytes, type_url: &str, nonce: &str) -> Encoded {
    let head = DiscoveryResponse {
        version_info: version.to_owned(),
        ..Default::default()
    };
    let tail = DiscoveryResponse {
        type_url: type_url.to_owned(),
        nonce: nonce.to_owned(),
        ..Default::default()
    };
    Encoded::framed(vec![
        head.encode_to_vec().into(),
        resources,
        tail.encode_to_vec().into(),
    ])
}

/// The length of a delta `Resource` message for `r`, fields in prost's
/// (tag) order: version (1), resource (2), name (3).
fn delta_resource_len(r: &Resource) -> usize {
    let string = |tag: u32, s: &str| {
        if s.is_empty() {
            0
        } else {
            key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
        }
    };
    string(3, &r.name) + string(1, &r.version) + prost::encoding::message::encoded_len(2, &r.body)
}

fn put_string(tag: u32, s: &str, buf: &mut Vec<u8>) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.extend_from_slice(s.as_bytes());
    }
}

/// A delta response: what prost encodes for a `DeltaDiscoveryResponse` of
/// these fields, written from the shared resources without copying them
/// into messages first.
pub(crate) fn delta(
    system_version: &str,
    updated: &[Arc<Resource>],
    type_url: &str,
    removed: &[Arc<str>],
    nonce: &str,
) -> Encoded {
    let head = DeltaDiscoveryResponse {
        system_version_info: system_version.to_owned(),
        ..Default::default()
    };
    let tail = DeltaDiscoveryResponse {
        type_url: type_url.to_owned(),
        removed_resources: removed.iter().map(|n| n.to_string()).collect(),
        nonce: nonce.to_owned(),
        ..Default::default()
    };
    let lens: Vec<usize> = updated.iter().map(|r| delta_resource_len(r)).collect();
    let total: usize = lens
        .iter()
        .map(|l| key_len(2) + encoded_len_varint(*l as u64) + l)
        .sum();
    let mut buf = Vec::with_capacity(head.encoded_len() + total + tail.encoded_len());
    head.encode_raw(&mut buf);
    for (r, len) in updated.iter().zip(lens) {
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(len as u64, &mut buf);
        put_string(1, &r.version, &mut buf);
        prost::encoding::message::encode(2, &r.body, &mut buf);
        put_string(3, &r.name, &mut buf);
    }
    tail.encode_raw(&mut buf);
    Encoded::framed(vec![Bytes::from(buf)])
}

/// The requests of one stream, decoded from the request body.
pub(crate) struct Requests<M> {
    body: tonic::body::Body,
    buf: BytesMut,
    _message: PhantomData<fn() -> M>,
}

impl<M: Message + Default> Requests<M> {
    pub(crate) fn new(body: tonic::body::Body) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            _message: PhantomData,
        }
    }

    /// The next request; `None` once the client has closed its side.
    pub(crate) async fn message(&mut self) -> Result<Option<M>, Status> {
        loop {
            if let Some(m) = self.decode()? {
                return Ok(Some(m));
            }
            let frame = std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await;
            match frame {
                Some(Ok(frame)) => {
                    // Trailers from a client carry nothing for us.
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                // A client that cancels its request stream has ended it.
                Some(Err(status)) if status.code() == tonic::Code::Cancelled => return Ok(None),
                Some(Err(status)) => return Err(status),
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(Status::invalid_argument(
                        "the request stream ended mid-message",
                    ));
                }
            }
        }
    }

    fn decode(&mut self) -> Result<Option<M>, Status> {
        if self.buf.len() < PREFIX {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::invalid_argument(
                "compressed requests are not supported",
            ));
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&self.buf[1..PREFIX]);
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_REQUEST {
            return Err(Status::out_of_range(format!(
                "request of {len} bytes; at most {MAX_REQUEST}"
            )));
        }
        if self.buf.len() < PREFIX + len {
            self.buf.reserve(PREFIX + len - self.buf.len());
            return Ok(None);
        }
        let message = M::decode(&self.buf[PREFIX..PREFIX + len])
            .map_err(|e| Status::invalid_argument(format!("not a valid request: {e}")))?;
        self.buf.advance(PREFIX + len);
        if self.buf.is_empty() && self.buf.capacity() > KEEP {
            self.buf = BytesMut::new();
        }
        Ok(Some(message))
    }
}

/// The response body of one stream: its responses as they come, then the
/// gRPC status as trailers (OK once the stream's task is done without one).
pub(crate) struct ResponseBody {
    rx: mpsc::Receiver<Result<Encoded, Status>>,
    pending: VecDeque<Bytes>,
    done: bool,
}

impl ResponseBody {
    pub(crate) fn new(rx: mpsc::Receiver<Result<Encoded, Status>>) -> Self {
        Self {
            rx,
            pending: VecDeque::new(),
            done: false,
        }
    }
}

fn trailers(status: &Status) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        // Only a message that cannot be a header fails; the code alone
        // still says how the stream ended.
        let _ = Status::new(status.code(), "").add_header(&mut headers);
    }
    headers
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(chunk) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(this.rx.poll_recv(cx)) {
                Some(Ok(Encoded(chunks))) => this.pending.extend(chunks),
                Some(Err(status)) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))));
                }
                None => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::Resource as DeltaResource;

    fn resource(name: &str, version: &str, value: &[u8]) -> Arc<Resource> {
        Arc::new(Resource {
            name: Arc::from(name),
            version: version.to_owned(),
            body: Any {
                type_url: "t".to_owned(),
                value: value.to_vec(),
            },
        })
    }

    fn message(e: &Encoded) -> Vec<u8> {
        let bytes: Vec<u8> = e.0.iter().flat_map(|c| c.iter().copied()).collect();
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(bytes[0], 0);
        assert_eq!(len, bytes.len() - PREFIX);
        assert_eq!(len, e.len());
        bytes[PREFIX..].to_vec()
    }

    #[test]
    fn responses_are_what_prost_encodes() {
        let rs = [resource("a", "1", b"x"), resource("b", "2", &[0; 300])];
        let bodies = rs.iter().map(|r| &r.body);
        let sotw = sotw("v", any_list(bodies.clone()), "t", "7");

        let expected = DiscoveryResponse {
            version_info: "v".to_owned(),
            resources: bodies.cloned().collect(),
            type_url: "t".to_owned(),
            nonce: "7".to_owned(),
            ..Default::default()
        };
        assert_eq!(message(&sotw), expected.encode_to_vec());

        let removed: Vec<Arc<str>> = vec![Arc::from("gone")];
        let delta = delta("s", &rs, "t", &removed, "8");
        let expected = DeltaDiscoveryResponse {
            system_version_info: "s".to_owned(),
            resources: rs
                .iter()
                .map(|r| DeltaResource {
                    name: r.name.to_string(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: "t".to_owned(),
            removed_resources: vec!["gone".to_owned()],
            nonce: "8".to_owned(),
            ..Default::default()
        };
        assert_eq!(message(&delta), expected.encode_to_vec());
    }
}
