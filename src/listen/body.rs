//! Request bodies as every listener hands them to its router: charged to the memory budget as
//! their bytes arrive ([`super::budget`]).
//!
//! - **gRPC** ([`Framing::Grpc`]): a message's 5-byte prefix announces its length. One over
//!   `--grpc-max-message-size` is refused from the prefix, for every service alike (health and
//!   reflection included). A message whole within one frame (a login, typically) passes as it
//!   came. One spread over several frames is assembled here, charged as it grows, and handed
//!   on only when whole: tonic reserves a message's announced length as soon as it reads the
//!   prefix, so it never sees a prefix before the bytes it announces are here and paid for.
//! - **HTTP** ([`Framing::Http`]): each chunk is charged as it arrives and held until the body
//!   is dropped (the handler collects it whole).
//!
//! A charge the budget cannot take fails the body ([`BodyError::Spent`]) and makes room by
//! closing the connection that holds the most; the router answers RESOURCE_EXHAUSTED or 503.
//! The request counts as receiving (its connection may be closed to make room) until its first
//! message is whole or its body ended, and as worked on from then until it is answered.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use super::budget::Charge;
use super::{Activity, Registry};

/// The gRPC message prefix: a compressed flag and a 4-byte big-endian length.
const GRPC_PREFIX: usize = 5;

/// How a listener's request bodies are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Length-prefixed gRPC messages, each at most this many bytes.
    Grpc { max_message: usize },
    /// An HTTP body, taken as it comes.
    Http,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The memory budget has no room for what arrived: the connection holding the most was
    /// asked to close; worth retrying.
    #[error("the server's memory budget for requests is spent; retry")]
    Spent,
    /// A gRPC message's prefix announced more than the limit.
    #[error("a message of {announced} bytes is over the limit of {limit} bytes")]
    TooLarge { announced: usize, limit: usize },
    /// The transport's own error (the peer reset the stream, the connection closed).
    #[error(transparent)]
    Transport(#[from] hyper::Error),
}

/// A request body charged to the memory budget as it arrives.
pub struct Body {
    inner: hyper::body::Incoming,
    framing: Framing,
    /// The budget's registry (to make room when it is spent) and the connection charged.
    registry: Arc<Registry>,
    activity: Arc<Activity>,
    /// What this body holds now: the largest message assembled so far (tonic keeps a buffer
    /// that large for the stream), or every HTTP chunk received.
    charge: Option<Charge>,
    /// gRPC: bytes of a message not yet whole, held back from tonic.
    partial: BytesMut,
    /// The request is still receiving its first message or its body.
    receiving: bool,
    failed: bool,
}

impl Body {
    pub(super) fn new(
        inner: hyper::body::Incoming,
        framing: Framing,
        registry: Arc<Registry>,
        activity: Arc<Activity>,
    ) -> Self {
        activity.receiving.fetch_add(1, Ordering::AcqRel);
        Self {
            inner,
            framing,
            registry,
            activity,
            charge: None,
            partial: BytesMut::new(),
            receiving: true,
            failed: false,
        }
    }

    /// The first message is whole or the body ended: the request is being worked on now.
    fn received(&mut self) {
        if std::mem::take(&mut self.receiving) {
            self.activity.receiving.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Holds `bytes` in all, charging what is not charged yet; makes room when it cannot.
    fn hold(&mut self, bytes: u64) -> Result<(), BodyError> {
        let charged = self.charge.as_ref().map_or(0, Charge::bytes);
        if bytes <= charged {
            return Ok(());
        }
        let more = bytes - charged;
        let grown = match &mut self.charge {
            Some(charge) => charge.try_grow(more),
            None => self
                .registry
                .budget
                .try_charge(&self.activity, more)
                .map(|charge| self.charge = Some(charge)),
        };
        grown.ok_or_else(|| {
            self.registry.make_room_for_memory();
            crate::metrics::record_memory_refused("body");
            BodyError::Spent
        })
    }

    /// A gRPC chunk: what can go on to tonic now (whole messages only), if anything.
    fn grpc(&mut self, data: Bytes, max_message: usize) -> Result<Option<Bytes>, BodyError> {
        if self.partial.is_empty() {
            let whole = whole_messages(&data, max_message)?;
            if whole == data.len() {
                self.received();
                return Ok(Some(data));
            }
        }
        self.hold((self.partial.len() + data.len()) as u64)?;
        self.partial.extend_from_slice(&data);
        let whole = whole_messages(&self.partial, max_message)?;
        if whole == 0 {
            return Ok(None);
        }
        self.received();
        Ok(Some(self.partial.split_to(whole).freeze()))
    }
}

/// The length of the longest run of whole messages at the start of `data`; an error as soon as
/// a prefix announces more than `max_message`.
fn whole_messages(data: &[u8], max_message: usize) -> Result<usize, BodyError> {
    let mut at = 0;
    while let Some(prefix) = data.get(at..at + GRPC_PREFIX) {
        let announced = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if announced > max_message {
            return Err(BodyError::TooLarge {
                announced,
                limit: max_message,
            });
        }
        let end = at + GRPC_PREFIX + announced;
        if end > data.len() {
            break;
        }
        at = end;
    }
    Ok(at)
}

impl Drop for Body {
    fn drop(&mut self) {
        self.received();
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        loop {
            let frame = match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    this.received();
                    // A message cut short by the end of the stream goes on as it is: tonic
                    // answers it as a damaged frame.
                    if !this.partial.is_empty() {
                        let rest = std::mem::take(&mut this.partial).freeze();
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    return Poll::Ready(None);
                }
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                // Trailers: the body ends with them.
                Err(frame) => {
                    this.received();
                    return Poll::Ready(Some(Ok(frame)));
                }
            };
            let passed = match this.framing {
                Framing::Grpc { max_message } => this.grpc(data, max_message),
                Framing::Http => {
                    let held = this.charge.as_ref().map_or(0, Charge::bytes);
                    this.hold(held + data.remaining() as u64)
                        .map(|()| Some(data))
                }
            };
            match passed {
                Ok(Some(data)) => {
                    if this.framing == Framing::Http && this.inner.is_end_stream() {
                        this.received();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) => continue,
                Err(e) => {
                    this.failed = true;
                    this.partial = BytesMut::new();
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || (self.partial.is_empty() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let partial = self.partial.len() as u64;
        hint.set_lower(hint.lower() + partial);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + partial);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(length: usize) -> Vec<u8> {
        let mut message = vec![0];
        message.extend_from_slice(&(length as u32).to_be_bytes());
        message.resize(GRPC_PREFIX + length, 7);
        message
    }

    #[test]
    fn only_whole_messages_pass_and_a_prefix_over_the_limit_fails_at_once() {
        let two = [message(3), message(10)].concat();
        assert_eq!(whole_messages(&two, 100).unwrap(), two.len());
        assert_eq!(whole_messages(&two[..12], 100).unwrap(), 8);
        assert_eq!(whole_messages(&two[..7], 100).unwrap(), 0);
        assert_eq!(whole_messages(&two[..3], 100).unwrap(), 0);
        assert_eq!(whole_messages(&[], 100).unwrap(), 0);
        let huge = message(101);
        assert!(matches!(
            whole_messages(&huge[..GRPC_PREFIX], 100),
            Err(BodyError::TooLarge {
                announced: 101,
                limit: 100
            })
        ));
        assert_eq!(whole_messages(&message(100), 100).unwrap(), 105);
    }
}
