//! CONNECT and room:join: credentials, workspace membership, the rooms granted.

use super::*;

#[test]
fn jwt_user_is_granted_the_rooms_of_the_workspace() {
    let h = Harness::start(|_| vec![]);
    let w = &h.w;
    let grant = h
        .authenticate(
            Credential::Jwt {
                user: w.ann,
                name: None,
            },
            w.ws,
        )
        .unwrap();
    assert_eq!(grant.user.name, "Ann");
    assert_eq!(grant.workspace, w.ws);
    assert_eq!(
        grant.rooms,
        vec![
            Room::User(w.ann),
            Room::Workspace(w.ws),
            Room::Channel(w.general),
            Room::Channel(w.quiet),
            Room::Dm(w.dm),
        ],
        "channel `elsewhere` of the other workspace is not listed"
    );
    let grant = h
        .authenticate(
            Credential::Jwt {
                user: w.ann,
                name: None,
            },
            w.ws2,
        )
        .unwrap();
    assert_eq!(
        grant.rooms,
        vec![
            Room::User(w.ann),
            Room::Workspace(w.ws2),
            Room::Channel(w.elsewhere)
        ]
    );
    h.stop();
}

#[test]
fn authentication_failures_say_why() {
    let h = Harness::start(|_| vec![]);
    let w = &h.w;
    let ghost = UserId::random();
    let err = h
        .authenticate(
            Credential::Jwt {
                user: ghost,
                name: None,
            },
            w.ws,
        )
        .unwrap_err();
    assert_eq!(err.message(), format!("user {ghost} does not exist"));
    let err = h
        .authenticate(
            Credential::Jwt {
                user: w.dave,
                name: None,
            },
            w.ws,
        )
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Forbidden(format!(
            "user {} is not a member of workspace {}",
            w.dave, w.ws
        ))
    );
    let nowhere = WorkspaceId::random();
    let err = h
        .authenticate(
            Credential::Jwt {
                user: w.ann,
                name: None,
            },
            nowhere,
        )
        .unwrap_err();
    assert_eq!(err.message(), format!("workspace {nowhere} does not exist"));
    let err = h
        .authenticate(Credential::Session("no-such-token".into()), w.ws)
        .unwrap_err();
    assert!(
        err.message()
            .contains("session token is unknown or expired"),
        "{err}"
    );
    assert!(
        !err.message().contains("no-such-token"),
        "never echo a token"
    );
    h.stop();
}

#[test]
fn sessions_authenticate_until_they_expire() {
    let h = Harness::start(|_| vec![]);
    let w = &h.w;
    let (status, body) = h.admin(AdminRequest::CreateSession {
        user: w.bob,
        ttl_seconds: 3600,
    });
    assert_eq!(status, 201);
    let token = body["token"].as_str().unwrap().to_owned();
    assert!(token.len() >= 64, "32+ random bytes, hex: {token}");
    let expires = DateTime::parse_from_rfc3339(body["expiresAt"].as_str().unwrap()).unwrap();
    assert!(expires > Utc::now() + chrono::Duration::minutes(59));
    let grant = h.authenticate(Credential::Session(token), w.ws).unwrap();
    assert_eq!(grant.user.id, w.bob);
    assert!(grant.rooms.contains(&Room::Dm(w.dm)));

    // A TTL of zero expires at once: `expires_at > now` no longer holds.
    let (_, body) = h.admin(AdminRequest::CreateSession {
        user: w.bob,
        ttl_seconds: 0,
    });
    let expired = body["token"].as_str().unwrap().to_owned();
    let err = h
        .authenticate(Credential::Session(expired), w.ws)
        .unwrap_err();
    assert!(err.message().contains("unknown or expired"), "{err}");

    let (status, body) = h.admin(AdminRequest::CreateSession {
        user: UserId::random(),
        ttl_seconds: 60,
    });
    assert_eq!(status, 404, "{body}");
    h.stop();
}

#[test]
fn check_member_answers_room_join() {
    let h = Harness::start(|_| vec![]);
    let w = &h.w;
    let ask = |user, target| {
        h.send(StoreCommand::CheckMember {
            asker: h.asker(user),
            ack: Some(4),
            target,
        });
        match h.reply() {
            StoreReply::Member {
                target: t, result, ..
            } => {
                assert_eq!(t, target);
                result
            }
            other => panic!("expected Member, got {other:?}"),
        }
    };
    assert_eq!(ask(w.bob, Target::Dm(w.dm)), Ok(()));
    assert_eq!(
        ask(w.bob, Target::Channel(w.quiet)).unwrap_err().status(),
        403
    );
    assert_eq!(
        ask(w.ann, Target::Channel(w.elsewhere))
            .unwrap_err()
            .status(),
        403
    );
    assert_eq!(
        ask(w.ann, Target::Dm(ConversationId::random()))
            .unwrap_err()
            .status(),
        404
    );
    h.stop();
}
