//! The one body type every answer of the edge uses: a boxed stream of bytes, so upstream
//! bodies pass through unbuffered and the edge's own answers (errors, admin JSON) fit the
//! same type.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};

/// Error type carried by [`Body`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming HTTP body (request or response).
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding `bytes` in one piece.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// Boxes any streaming body (an upstream's, a client's) without reading it.
pub fn stream<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// A body the edge can forward: any stream of bytes (hyper's `Incoming` in production).
pub trait ClientBody: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static {}

impl<B> ClientBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static
{
}
