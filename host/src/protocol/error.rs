//! One wire-error type and the one place that knows which reply codes close the connection.

use std::fmt;

/// AMQP 0-9-1 reply codes (spec section 1.2 "Constants") as RabbitMQ uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ReplyCode {
    /// 311: content too large (soft).
    ContentTooLarge = 311,
    /// 312: mandatory message could not be routed (basic.return).
    NoRoute = 312,
    /// 313: immediate message had no consumer (basic.return).
    NoConsumers = 313,
    /// 320: an operator closed the connection.
    ConnectionForced = 320,
    /// 402: invalid path.
    InvalidPath = 402,
    /// 403: access refused.
    AccessRefused = 403,
    /// 404: not found.
    NotFound = 404,
    /// 405: resource locked (exclusive queue of another connection).
    ResourceLocked = 405,
    /// 406: precondition failed.
    PreconditionFailed = 406,
    /// 501: malformed frame.
    FrameError = 501,
    /// 502: undecodable method arguments.
    SyntaxError = 502,
    /// 503: invalid command.
    CommandInvalid = 503,
    /// 504: invalid channel use.
    ChannelError = 504,
    /// 505: unexpected frame.
    UnexpectedFrame = 505,
    /// 506: server resource exhausted.
    ResourceError = 506,
    /// 530: not allowed.
    NotAllowed = 530,
    /// 540: not implemented.
    NotImplemented = 540,
    /// 541: internal error.
    InternalError = 541,
}

impl ReplyCode {
    /// The spec's name, used as the prefix of reply texts ("NOT_FOUND - ...").
    pub fn name(self) -> &'static str {
        match self {
            ReplyCode::ContentTooLarge => "CONTENT_TOO_LARGE",
            ReplyCode::NoRoute => "NO_ROUTE",
            ReplyCode::NoConsumers => "NO_CONSUMERS",
            ReplyCode::ConnectionForced => "CONNECTION_FORCED",
            ReplyCode::InvalidPath => "INVALID_PATH",
            ReplyCode::AccessRefused => "ACCESS_REFUSED",
            ReplyCode::NotFound => "NOT_FOUND",
            ReplyCode::ResourceLocked => "RESOURCE_LOCKED",
            ReplyCode::PreconditionFailed => "PRECONDITION_FAILED",
            ReplyCode::FrameError => "FRAME_ERROR",
            ReplyCode::SyntaxError => "SYNTAX_ERROR",
            ReplyCode::CommandInvalid => "COMMAND_INVALID",
            ReplyCode::ChannelError => "CHANNEL_ERROR",
            ReplyCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ReplyCode::ResourceError => "RESOURCE_ERROR",
            ReplyCode::NotAllowed => "NOT_ALLOWED",
            ReplyCode::NotImplemented => "NOT_IMPLEMENTED",
            ReplyCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// Whether the spec makes this a connection ("hard") error.
    pub fn is_hard(self) -> bool {
        matches!(
            self,
            ReplyCode::ConnectionForced
                | ReplyCode::InvalidPath
                | ReplyCode::FrameError
                | ReplyCode::SyntaxError
                | ReplyCode::CommandInvalid
                | ReplyCode::ChannelError
                | ReplyCode::UnexpectedFrame
                | ReplyCode::ResourceError
                | ReplyCode::NotAllowed
                | ReplyCode::NotImplemented
                | ReplyCode::InternalError
        )
    }
}

/// An error to report to the peer: reply code, text, and the method that caused it.
///
/// Whether it closes the channel or the whole connection is decided in one place,
/// [`AmqpError::closes_connection`], from the code and the channel it happened on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    /// The reply code.
    pub code: ReplyCode,
    /// The reply text, prefixed with the code's name as RabbitMQ does.
    pub text: String,
    /// Class id of the offending method (0 when none).
    pub class_id: u16,
    /// Method id of the offending method (0 when none).
    pub method_id: u16,
}

impl AmqpError {
    /// Builds an error; `detail` follows the code name: `NOT_FOUND - no queue 'q' in vhost '/'`.
    pub fn new(code: ReplyCode, detail: impl fmt::Display) -> Self {
        let mut text = format!("{} - {detail}", code.name());
        // A reply-text is a shortstr: at most 255 bytes, cut on a char boundary.
        if text.len() > 255 {
            let mut end = 255;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Self {
            code,
            text,
            class_id: 0,
            method_id: 0,
        }
    }

    /// Records the method that caused the error, unless one is recorded already.
    pub fn on_method(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    /// The one mapping point: hard codes, and any error on channel 0, close the connection;
    /// other errors close only their channel.
    pub fn closes_connection(&self, channel: u16) -> bool {
        channel == 0 || self.code.is_hard()
    }

    /// 404 NOT_FOUND.
    pub fn not_found(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::NotFound, detail)
    }
    /// 403 ACCESS_REFUSED.
    pub fn access_refused(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::AccessRefused, detail)
    }
    /// 405 RESOURCE_LOCKED.
    pub fn resource_locked(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::ResourceLocked, detail)
    }
    /// 406 PRECONDITION_FAILED.
    pub fn precondition_failed(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::PreconditionFailed, detail)
    }
    /// 501 FRAME_ERROR.
    pub fn frame_error(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::FrameError, detail)
    }
    /// 502 SYNTAX_ERROR.
    pub fn syntax_error(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::SyntaxError, detail)
    }
    /// 503 COMMAND_INVALID.
    pub fn command_invalid(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::CommandInvalid, detail)
    }
    /// 504 CHANNEL_ERROR.
    pub fn channel_error(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::ChannelError, detail)
    }
    /// 505 UNEXPECTED_FRAME.
    pub fn unexpected_frame(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::UnexpectedFrame, detail)
    }
    /// 506 RESOURCE_ERROR.
    pub fn resource_error(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::ResourceError, detail)
    }
    /// 530 NOT_ALLOWED.
    pub fn not_allowed(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::NotAllowed, detail)
    }
    /// 540 NOT_IMPLEMENTED.
    pub fn not_implemented(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::NotImplemented, detail)
    }
    /// 541 INTERNAL_ERROR.
    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::InternalError, detail)
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.text, self.code as u16)
    }
}

impl std::error::Error for AmqpError {}
