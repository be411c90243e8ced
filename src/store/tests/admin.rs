//! The admin API: rows, conflicts, membership announcements, publish and history.

use super::*;

#[test]
fn admin_creates_rows_and_announces_membership_changes() {
    let h = Harness::start(|_| vec![]);
    let w = &h.w;
    let (status, body) = h.admin(AdminRequest::CreateUser {
        name: "Eve".into(),
        email: Some("eve@example.com".into()),
    });
    assert_eq!(status, 201);
    let eve: UserId = body["id"].as_str().unwrap().parse().unwrap();
    let (status, body) = h.admin(AdminRequest::CreateUser {
        name: "Eve again".into(),
        email: Some("eve@example.com".into()),
    });
    assert_eq!(status, 409);
    assert!(
        body["error"].as_str().unwrap().contains("eve@example.com"),
        "{body}"
    );

    let (status, body) = h.admin(AdminRequest::CreateWorkspace {
        slug: "acme".into(),
        name: "Acme 2".into(),
    });
    assert_eq!((status, body["error"].is_string()), (409, true));

    // Not yet in the workspace: a conflict that says what to do.
    let (status, body) = h.admin(AdminRequest::AddChannelMember {
        channel: w.general,
        user: eve,
    });
    assert_eq!(status, 409);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("add them to the workspace first"),
        "{body}"
    );

    let (status, _) = h.admin(AdminRequest::AddWorkspaceMember {
        workspace: w.ws,
        user: eve,
        role: Some("member".into()),
    });
    assert_eq!(status, 201);
    let (status, _) = h.admin(AdminRequest::AddWorkspaceMember {
        workspace: WorkspaceId::random(),
        user: eve,
        role: None,
    });
    assert_eq!(status, 404);

    h.send(StoreCommand::Admin {
        from: CONN,
        request: AdminRequest::AddChannelMember {
            channel: w.general,
            user: eve,
        },
    });
    let joined = MembershipChange {
        user: eve,
        workspace: w.ws,
        room: Room::Channel(w.general),
        joined: true,
    };
    assert_eq!(h.membership(), joined);
    assert_eq!(h.admin_reply().0, 201);

    h.send(StoreCommand::Admin {
        from: CONN,
        request: AdminRequest::RemoveChannelMember {
            channel: w.general,
            user: eve,
        },
    });
    assert_eq!(
        h.membership(),
        MembershipChange {
            joined: false,
            ..joined
        }
    );
    assert_eq!(h.admin_reply().0, 200);
    let (status, _) = h.admin(AdminRequest::RemoveChannelMember {
        channel: w.general,
        user: eve,
    });
    assert_eq!(status, 404, "no longer a member");

    let (status, body) = h.admin(AdminRequest::CreateChannel {
        workspace: w.ws,
        slug: "general".into(),
        name: "General 2".into(),
        is_private: false,
    });
    assert_eq!(status, 409, "{body}");
    let (status, body) = h.admin(AdminRequest::CreateChannel {
        workspace: w.ws,
        slug: "news".into(),
        name: "News".into(),
        is_private: false,
    });
    assert_eq!(status, 201);
    assert!(body["id"].as_str().unwrap().parse::<ChannelId>().is_ok());

    h.send(StoreCommand::Admin {
        from: CONN,
        request: AdminRequest::CreateConversation {
            workspace: w.ws,
            participants: vec![eve, w.carl, eve],
        },
    });
    let first = h.membership();
    let second = h.membership();
    let (status, body) = h.admin_reply();
    assert_eq!(status, 201);
    let dm: ConversationId = body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        (first.user, first.room, first.joined),
        (eve, Room::Dm(dm), true)
    );
    assert_eq!((second.user, second.room), (w.carl, Room::Dm(dm)));

    let (status, _) = h.admin(AdminRequest::CreateConversation {
        workspace: w.ws,
        participants: vec![eve, w.dave],
    });
    assert_eq!(status, 409, "dave is not in the workspace");
    h.stop();
}

#[test]
fn admin_publish_is_delivered_like_a_send_and_history_reads_it() {
    let h = Harness::start(|_| vec![]);
    let w = &h.w;
    let mut message = new_message(w.bob, w.ws, Target::Dm(w.dm), "from the server");
    message.workspace = None;
    h.send(StoreCommand::Admin {
        from: CONN,
        request: AdminRequest::Publish(message.clone()),
    });
    let (room, name, _) = h.broadcast();
    assert_eq!((room, name.as_str()), (Room::Dm(w.dm), "message:new"));
    let (status, body) = h.admin_reply();
    assert_eq!(status, 201);
    assert_eq!(body["sequence"], 1);
    assert_eq!(body["conversationId"], w.dm.to_string());
    assert_eq!(body["author"]["name"], "Bob");

    message.author = w.carl;
    let (status, body) = h.admin(AdminRequest::Publish(message));
    assert_eq!(status, 403, "{body}");

    let (status, body) = h.admin(AdminRequest::History(query(
        Target::Dm(w.dm),
        None,
        None,
        50,
    )));
    assert_eq!(status, 200);
    assert_eq!(body["messages"][0]["content"], "from the server");
    let (status, body) = h.admin(AdminRequest::History(query(
        Target::Channel(ChannelId::random()),
        None,
        None,
        50,
    )));
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("does not exist"));
    h.stop();
}
