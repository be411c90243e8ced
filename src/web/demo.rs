//! Demo mode: a made-up workspace seeded into the embedded store at start, and the roster the
//! demo page signs in from. Seeding goes through the store's [`Backend`] calls, the way the
//! admin API fills it, before the store thread starts.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::ids::{ChannelId, ConversationId, Target, UserId, WorkspaceId};
use crate::store::Backend;
use crate::store::{NewMessage, StoreError};

/// The seeded workspace: who is in it and where, as the page needs to show it.
#[derive(Debug)]
pub struct Demo {
    /// The workspace every demo user is a member of.
    pub workspace: WorkspaceId,
    /// The demo users, in sign-in order.
    pub users: Vec<(UserId, String)>,
    /// `GET /demo/api/workspace`: the roster as JSON, built once.
    pub roster: String,
}

impl Demo {
    /// Whether `user` is one of the demo users (the only ones demo sign-in serves).
    pub fn has_user(&self, user: UserId) -> bool {
        self.users.iter().any(|(id, _)| *id == user)
    }
}

/// The demo's people.
const USERS: [&str; 5] = ["Ada", "Grace", "Alan", "Katherine", "Edsger"];

/// Channels: slug, name, members (indexes into [`USERS`]).
const CHANNELS: [(&str, &str, &[usize]); 3] = [
    ("general", "general", &[0, 1, 2, 3, 4]),
    ("random", "random", &[0, 1, 2, 3, 4]),
    ("engineering", "engineering", &[0, 1, 2, 4]),
];

/// Direct conversations (indexes into [`USERS`]).
const CONVERSATIONS: [&[usize]; 2] = [&[0, 1], &[1, 3]];

/// The history the demo starts with: author, channel slug (or `None`: the first DM), text.
const HISTORY: [(usize, Option<&str>, &str); 6] = [
    (1, Some("general"), "Welcome to the OComms demo! Open a second browser tab, sign in as someone else, and chat with yourself."),
    (2, Some("general"), "Everything lives in memory here: stop the server and it is gone."),
    (3, Some("general"), "Start typing and the others see it. Switch a tab away and you show as away."),
    (4, Some("engineering"), "Each channel numbers its messages. After a reconnect the page asks for what it missed with message:history {afterSequence}."),
    (0, Some("random"), "The page you are looking at talks Engine.IO and Socket.IO over one WebSocket, in about 300 lines of JavaScript."),
    (1, None, "Hi Ada, this is a direct message: only the two of us see it."),
];

/// Seeds an empty store with the demo workspace and returns its roster.
pub fn seed<B: Backend>(backend: &mut B, now: DateTime<Utc>) -> Result<Demo, StoreError> {
    let workspace = backend.create_workspace("demo", "OComms demo", now)?;
    let mut users = Vec::with_capacity(USERS.len());
    for name in USERS {
        let id = backend.create_user(name, None, now)?;
        backend.add_workspace_member(workspace, id, Some("member"))?;
        users.push((id, name.to_owned()));
    }
    let mut channels: Vec<(ChannelId, &str, Vec<UserId>)> = Vec::new();
    for (slug, name, members) in CHANNELS {
        let id = backend.create_channel(workspace, slug, name, false, now)?;
        let members: Vec<UserId> = members.iter().map(|&i| users[i].0).collect();
        for &user in &members {
            backend.add_channel_member(id, user)?;
        }
        channels.push((id, slug, members));
    }
    let mut conversations: Vec<(ConversationId, Vec<UserId>)> = Vec::new();
    for participants in CONVERSATIONS {
        let participants: Vec<UserId> = participants.iter().map(|&i| users[i].0).collect();
        let (id, _) = backend.create_conversation(workspace, &participants, now)?;
        conversations.push((id, participants));
    }
    let history = HISTORY
        .iter()
        .map(|&(author, channel, text)| {
            let target = match channel {
                Some(slug) => Target::Channel(
                    channels
                        .iter()
                        .find(|(_, s, _)| *s == slug)
                        .map(|(id, _, _)| *id)
                        .expect("HISTORY names a channel of CHANNELS"),
                ),
                None => Target::Dm(conversations[0].0),
            };
            NewMessage {
                author: users[author].0,
                workspace: Some(workspace),
                target,
                content: text.to_owned(),
                client_msg_id: None,
            }
        })
        .collect();
    for stored in backend.send_batch(history, now) {
        stored?;
    }
    let roster = roster(workspace, &users, &channels, &conversations).to_string();
    Ok(Demo {
        workspace,
        users,
        roster,
    })
}

fn roster(
    workspace: WorkspaceId,
    users: &[(UserId, String)],
    channels: &[(ChannelId, &str, Vec<UserId>)],
    conversations: &[(ConversationId, Vec<UserId>)],
) -> Value {
    json!({
        "workspace": {"id": workspace, "name": "OComms demo"},
        "users": users.iter().map(|(id, name)| json!({"id": id, "name": name})).collect::<Vec<_>>(),
        "channels": channels.iter().map(|(id, slug, members)| json!({
            "id": id, "slug": slug, "name": slug, "memberIds": members,
        })).collect::<Vec<_>>(),
        "conversations": conversations.iter().map(|(id, participants)| json!({
            "id": id, "participantIds": participants,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HistoryQuery;
    use crate::store::{MemoryBackend, Reader};

    #[test]
    fn seeds_a_workspace_whose_members_can_read_their_rooms() {
        let mut backend = MemoryBackend::new();
        let demo = seed(&mut backend, Utc::now()).unwrap();
        assert_eq!(demo.users.len(), USERS.len());
        let roster: Value = serde_json::from_str(&demo.roster).unwrap();
        assert_eq!(roster["channels"].as_array().unwrap().len(), CHANNELS.len());
        let general: ChannelId = roster["channels"][0]["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let reader = Reader {
            user: demo.users[4].0,
            workspace: demo.workspace,
        };
        let query = HistoryQuery {
            target: Target::Channel(general),
            after: None,
            before: None,
            limit: 50,
        };
        let page = backend.history(Some(reader), &query).unwrap();
        assert_eq!(page.len(), 3, "general starts with its three messages");
        assert_eq!(page[0].sequence, 1);
        // Katherine is not in #engineering.
        let engineering: ChannelId = roster["channels"][2]["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let katherine = demo.users[3].0;
        assert!(backend
            .check_member(katherine, demo.workspace, Target::Channel(engineering))
            .is_err());
        assert!(demo.has_user(katherine));
        assert!(!demo.has_user(UserId(uuid::Uuid::nil())));
    }
}
