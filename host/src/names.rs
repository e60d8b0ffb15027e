//! Names the broker generates: consumer tags, `amq.gen-*` queues and direct reply-to names.

use crate::protocol::AmqpError;

/// 22 URL-safe random characters (132 bits), as RabbitMQ uses for generated names: consumer
/// tags, `amq.gen-*` queues and direct reply-to names. Reply-to names are capabilities (whoever
/// knows one can send to that channel), so the bits come from the operating system's CSPRNG,
/// never from a seeded generator; 541 INTERNAL_ERROR in the unlikely case the OS refuses.
pub fn random_suffix() -> Result<String, AmqpError> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 22];
    getrandom::fill(&mut bytes)
        .map_err(|e| AmqpError::internal(format!("no random bytes for a name: {e}")))?;
    // 64 symbols: the low six bits of a uniform byte pick one uniformly.
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 63)] as char)
        .collect())
}
