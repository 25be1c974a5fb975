//! Channel and event names: what kind a channel is, and which names are acceptable.

/// The prefix of the channel that carries events sent to one signed-in user.
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// What a channel name says about the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelKind {
    pub access: Access,
    /// A cache channel replays its last event to a new subscriber.
    pub cache: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Private,
    /// `private-encrypted-`: auth as private; the server relays ciphertext; no client events.
    Encrypted,
    Presence,
    /// `#server-to-user-{id}`: only the signed-in user `id` may subscribe.
    User,
}

impl ChannelKind {
    pub fn of(name: &str) -> ChannelKind {
        let (access, rest) = if let Some(rest) = name.strip_prefix("private-encrypted-") {
            (Access::Encrypted, rest)
        } else if let Some(rest) = name.strip_prefix("private-") {
            (Access::Private, rest)
        } else if let Some(rest) = name.strip_prefix("presence-") {
            (Access::Presence, rest)
        } else if name.starts_with(USER_CHANNEL_PREFIX) {
            (Access::User, "")
        } else {
            (Access::Public, name)
        };
        ChannelKind {
            access,
            cache: rest.starts_with("cache-"),
        }
    }

    /// Clients may send `client-*` events on it.
    pub fn allows_client_events(self) -> bool {
        matches!(self.access, Access::Private | Access::Presence)
    }

    pub fn is_presence(self) -> bool {
        self.access == Access::Presence
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is longer than {0} characters")]
    TooLong(usize),
    #[error("name contains characters outside [A-Za-z0-9_-=@,.;]")]
    BadCharacter,
}

/// A channel name clients may subscribe to and the API may publish to.
pub fn validate_channel_name(name: &str, max_len: usize) -> Result<(), NameError> {
    if let Some(user_id) = name.strip_prefix(USER_CHANNEL_PREFIX) {
        return validate_user_id(user_id, max_len);
    }
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max_len {
        return Err(NameError::TooLong(max_len));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b);
    if !name.bytes().all(allowed) {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

/// A user id, as given at sign-in, in presence channel data or in a REST path.
pub fn validate_user_id(id: &str, max_len: usize) -> Result<(), NameError> {
    if id.is_empty() {
        return Err(NameError::Empty);
    }
    if id.len() > max_len {
        return Err(NameError::TooLong(max_len));
    }
    if id.chars().any(char::is_control) {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

/// An event name published over the API or sent by a client.
pub fn validate_event_name(name: &str, max_len: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max_len {
        return Err(NameError::TooLong(max_len));
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let kind = |n| ChannelKind::of(n);
        assert_eq!(kind("chat").access, Access::Public);
        assert_eq!(kind("private-chat").access, Access::Private);
        assert_eq!(kind("private-encrypted-chat").access, Access::Encrypted);
        assert_eq!(kind("presence-room").access, Access::Presence);
        assert_eq!(kind("#server-to-user-42").access, Access::User);
        assert!(kind("cache-x").cache);
        assert!(kind("private-cache-x").cache);
        assert!(kind("presence-cache-x").cache);
        assert!(kind("private-encrypted-cache-x").cache);
        assert!(!kind("chat-cache-x").cache);
        assert!(kind("private-chat").allows_client_events());
        assert!(kind("presence-room").allows_client_events());
        assert!(!kind("private-encrypted-chat").allows_client_events());
        assert!(!kind("chat").allows_client_events());
    }

    #[test]
    fn channel_names() {
        assert_eq!(validate_channel_name("a-b_c=d@e,f.g;h", 164), Ok(()));
        assert_eq!(validate_channel_name("", 164), Err(NameError::Empty));
        assert_eq!(
            validate_channel_name(&"a".repeat(165), 164),
            Err(NameError::TooLong(164))
        );
        assert_eq!(validate_channel_name(&"a".repeat(164), 164), Ok(()));
        for bad in ["a b", "a/b", "é", "a#b", "a\u{0}", "x*"] {
            assert_eq!(
                validate_channel_name(bad, 164),
                Err(NameError::BadCharacter),
                "{bad}"
            );
        }
        assert_eq!(validate_channel_name("#server-to-user-7", 164), Ok(()));
        assert_eq!(
            validate_channel_name("#server-to-user-", 164),
            Err(NameError::Empty)
        );
    }

    #[test]
    fn event_and_user_names() {
        assert_eq!(validate_event_name("my-event", 200), Ok(()));
        assert_eq!(validate_event_name("", 200), Err(NameError::Empty));
        assert_eq!(
            validate_event_name(&"e".repeat(201), 200),
            Err(NameError::TooLong(200))
        );
        assert_eq!(validate_user_id("user@example.com", 128), Ok(()));
        assert_eq!(validate_user_id("a\nb", 128), Err(NameError::BadCharacter));
    }
}
