//! Users and tokens.

use std::sync::Arc;

use kiln_domain::{Role, UserId};
use kiln_store::{
    ExternalIdentity, NewToken, NewUser, Store, StoreError, TokenKind, UserLimits, UserPatch,
};

use crate::helpers::{assert_conflict, assert_not_found, at, user};

fn new_user(name: &str, role: Role) -> NewUser {
    NewUser {
        username: name.to_owned(),
        password_hash: format!("hash-of-{name}"),
        role,
    }
}

fn token(user: UserId, hash: &[u8], kind: TokenKind, expires_ms: Option<i64>) -> NewToken {
    NewToken {
        user,
        hash: hash.to_vec(),
        kind,
        name: format!("t-{}", hash[0]),
        expires_at: expires_ms.map(at),
    }
}

pub async fn users_insert_get_list_count(store: Arc<dyn Store>) {
    assert_eq!(store.user_count().await.unwrap(), 0);
    assert!(store.user_list().await.unwrap().is_empty());

    let alice = store
        .user_insert(new_user("alice", Role::Admin), at(5))
        .await
        .unwrap();
    let bob = store
        .user_insert(new_user("bob", Role::Client), at(7))
        .await
        .unwrap();

    assert_eq!(alice.username, "alice");
    assert_eq!(alice.role, Role::Admin);
    assert!(!alice.disabled);
    assert_eq!(alice.created_at, at(5));
    assert_ne!(alice.id, bob.id);
    assert_eq!(store.user_get(bob.id).await.unwrap(), bob);
    assert_eq!(store.user_count().await.unwrap(), 2);
    assert_eq!(store.user_list().await.unwrap(), vec![alice, bob]);
    assert_not_found(store.user_get(UserId(9_999)).await);
}

pub async fn duplicate_username_is_a_conflict(store: Arc<dyn Store>) {
    user(&store, "alice").await;
    assert_conflict(
        store
            .user_insert(new_user("alice", Role::Client), at(1))
            .await,
    );
    assert_eq!(store.user_count().await.unwrap(), 1);
}

pub async fn user_by_name_returns_the_password_hash(store: Arc<dyn Store>) {
    let id = store
        .user_insert(new_user("carol", Role::Client), at(0))
        .await
        .unwrap()
        .id;
    let record = store.user_by_name("carol").await.unwrap().expect("carol");
    assert_eq!(record.user.id, id);
    assert_eq!(record.user.username, "carol");
    assert_eq!(record.password_hash, "hash-of-carol");
    assert!(store.user_by_name("nobody").await.unwrap().is_none());
}

pub async fn user_update_patches_only_given_fields(store: Arc<dyn Store>) {
    let id = store
        .user_insert(new_user("dave", Role::Client), at(0))
        .await
        .unwrap()
        .id;

    let updated = store
        .user_update(
            id,
            UserPatch {
                role: Some(Role::Admin),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.role, Role::Admin);
    assert!(!updated.disabled);

    let updated = store
        .user_update(
            id,
            UserPatch {
                password_hash: Some("new-hash".to_owned()),
                disabled: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.role, Role::Admin, "role kept");
    assert!(updated.disabled);
    let record = store.user_by_name("dave").await.unwrap().unwrap();
    assert_eq!(record.password_hash, "new-hash");
    assert_eq!(record.user, updated);
    assert_eq!(store.user_get(id).await.unwrap(), updated);

    assert_not_found(store.user_update(UserId(9_999), UserPatch::default()).await);
}

pub async fn tokens_insert_lookup_list_delete(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let s1 = store
        .token_insert(
            token(alice, &[1; 32], TokenKind::Session, Some(1_000)),
            at(10),
        )
        .await
        .unwrap();
    let s2 = store
        .token_insert(token(alice, &[2; 32], TokenKind::Session, None), at(20))
        .await
        .unwrap();
    let api = store
        .token_insert(token(alice, &[3; 32], TokenKind::Api, None), at(30))
        .await
        .unwrap();
    assert_eq!(s1.user, alice);
    assert_eq!(s1.kind, TokenKind::Session);
    assert_eq!(s1.name, "t-1");
    assert_eq!(s1.created_at, at(10));
    assert_eq!(s1.expires_at, Some(at(1_000)));

    let (who, info) = store
        .token_lookup(&[1; 32], at(500))
        .await
        .unwrap()
        .expect("a live token");
    assert_eq!(who.id, alice);
    assert_eq!(info, s1);
    assert!(
        store
            .token_lookup(&[9; 32], at(500))
            .await
            .unwrap()
            .is_none()
    );

    // Newest first, one kind only.
    assert_eq!(
        store.token_list(alice, TokenKind::Session).await.unwrap(),
        vec![s2.clone(), s1.clone()]
    );
    assert_eq!(
        store.token_list(alice, TokenKind::Api).await.unwrap(),
        vec![api.clone()]
    );

    store.token_delete(alice, s2.id).await.unwrap();
    assert!(
        store
            .token_lookup(&[2; 32], at(500))
            .await
            .unwrap()
            .is_none()
    );
    assert_not_found(store.token_delete(alice, s2.id).await);

    store.token_delete_hash(&[3; 32]).await.unwrap();
    assert!(
        store
            .token_lookup(&[3; 32], at(500))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .token_list(alice, TokenKind::Api)
            .await
            .unwrap()
            .is_empty()
    );
    // Deleting nothing is fine.
    store.token_delete_hash(&[3; 32]).await.unwrap();
    assert_eq!(
        store.token_list(alice, TokenKind::Session).await.unwrap(),
        vec![s1]
    );
}

pub async fn expired_token_or_disabled_user_looks_up_as_none(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    store
        .token_insert(
            token(alice, &[1; 32], TokenKind::Session, Some(1_000)),
            at(0),
        )
        .await
        .unwrap();
    assert!(
        store
            .token_lookup(&[1; 32], at(999))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .token_lookup(&[1; 32], at(1_000))
            .await
            .unwrap()
            .is_none(),
        "a token is dead at its expiry instant"
    );
    assert!(
        store
            .token_lookup(&[1; 32], at(5_000))
            .await
            .unwrap()
            .is_none()
    );

    store
        .token_insert(token(alice, &[2; 32], TokenKind::Api, None), at(0))
        .await
        .unwrap();
    assert!(
        store
            .token_lookup(&[2; 32], at(5_000))
            .await
            .unwrap()
            .is_some()
    );
    store
        .user_update(
            alice,
            UserPatch {
                disabled: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert!(
        store
            .token_lookup(&[2; 32], at(5_000))
            .await
            .unwrap()
            .is_none()
    );
    store
        .user_update(
            alice,
            UserPatch {
                disabled: Some(false),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert!(
        store
            .token_lookup(&[2; 32], at(5_000))
            .await
            .unwrap()
            .is_none(),
        "disabling revoked the token: enabling the user again does not bring it back"
    );
}

pub async fn a_new_password_or_role_revokes_the_users_tokens(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    for (who, hash, kind) in [
        (alice, [1; 32], TokenKind::Session),
        (alice, [2; 32], TokenKind::Api),
        (bob, [3; 32], TokenKind::Api),
    ] {
        store
            .token_insert(token(who, &hash, kind, None), at(0))
            .await
            .unwrap();
    }
    let alive = |hash: [u8; 32]| {
        let store = store.clone();
        async move { store.token_lookup(&hash, at(1)).await.unwrap().is_some() }
    };
    store
        .user_update(
            bob,
            UserPatch {
                role: Some(Role::Operator),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert!(!alive([3; 32]).await, "a role change revokes bob's token");
    assert!(alive([1; 32]).await && alive([2; 32]).await, "alice's stay");
    store
        .user_update(
            alice,
            UserPatch {
                password_hash: Some("new-hash".to_owned()),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert!(!alive([1; 32]).await, "the session is revoked");
    assert!(!alive([2; 32]).await, "the API token is revoked");
    assert!(
        store
            .token_list(alice, TokenKind::Api)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn token_delete_of_another_users_token_is_not_found(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let t = store
        .token_insert(token(alice, &[1; 32], TokenKind::Api, None), at(0))
        .await
        .unwrap();
    let result = store.token_delete(bob, t.id).await;
    assert!(
        matches!(result, Err(StoreError::NotFound)),
        "got {result:?}"
    );
    assert!(store.token_lookup(&[1; 32], at(1)).await.unwrap().is_some());
}

pub async fn token_prune_deletes_only_expired_tokens(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    for (hash, expires) in [
        ([1; 32], Some(1_000)),
        ([2; 32], Some(2_000)),
        ([3; 32], None),
    ] {
        store
            .token_insert(token(alice, &hash, TokenKind::Api, expires), at(0))
            .await
            .unwrap();
    }
    assert_eq!(store.token_prune(at(999)).await.unwrap(), 0);
    assert_eq!(store.token_prune(at(1_000)).await.unwrap(), 1);
    let left: Vec<_> = store
        .token_list(alice, TokenKind::Api)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.expires_at)
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&Some(at(1_000))), "{left:?}");
    assert_eq!(store.token_prune(at(10_000)).await.unwrap(), 1);
    assert!(
        store
            .token_lookup(&[3; 32], at(10_000))
            .await
            .unwrap()
            .is_some(),
        "a token without expiry stays"
    );
}

pub async fn an_external_identity_links_to_one_user(store: Arc<dyn Store>) {
    let entra = |subject: &str| ExternalIdentity {
        issuer: "https://login.example/tenant/v2.0".to_owned(),
        subject: subject.to_owned(),
    };
    assert_eq!(store.user_by_identity(&entra("oid-1")).await.unwrap(), None);
    let made = store
        .user_insert_linked(new_user("ada", Role::Client), entra("oid-1"), at(3))
        .await
        .unwrap();
    assert_eq!((made.username.as_str(), made.role), ("ada", Role::Client));
    assert_eq!(
        store.user_by_identity(&entra("oid-1")).await.unwrap(),
        Some(made.clone())
    );
    // The same subject at another issuer is another person.
    let elsewhere = ExternalIdentity {
        issuer: "https://other.example".to_owned(),
        subject: "oid-1".to_owned(),
    };
    assert_eq!(store.user_by_identity(&elsewhere).await.unwrap(), None);

    // A taken name, or an identity already linked: a conflict that stores nothing.
    user(&store, "grace").await;
    assert_conflict(
        store
            .user_insert_linked(new_user("grace", Role::Client), entra("oid-2"), at(4))
            .await,
    );
    assert_eq!(store.user_by_identity(&entra("oid-2")).await.unwrap(), None);
    assert_conflict(
        store
            .user_insert_linked(new_user("ada-2", Role::Client), entra("oid-1"), at(4))
            .await,
    );
    assert!(store.user_by_name("ada-2").await.unwrap().is_none());
    assert_eq!(store.user_count().await.unwrap(), 2);

    // A disabled user is still found (the caller refuses them).
    store
        .user_update(
            made.id,
            UserPatch {
                disabled: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    let found = store.user_by_identity(&entra("oid-1")).await.unwrap();
    assert!(found.is_some_and(|u| u.disabled && u.id == made.id));
}

pub async fn user_limits_are_set_replaced_and_cleared(store: Arc<dyn Store>) {
    let ada = user(&store, "ada").await;
    assert!(store.user_limits(ada).await.unwrap().is_default());
    let limits = UserLimits {
        submit_rate: Some("5/m".to_owned()),
        submit_burst: Some(3),
        max_active: Some(0),
        slot_share: Some(0.25),
        storage: Some(u64::MAX),
    };
    assert_eq!(
        store.user_limits_set(ada, limits.clone()).await.unwrap(),
        limits
    );
    let stored = store.user_limits(ada).await.unwrap();
    assert_eq!(
        stored.storage,
        Some(i64::MAX as u64),
        "clamped to what a column holds"
    );
    assert_eq!(
        UserLimits {
            storage: None,
            ..stored
        },
        UserLimits {
            storage: None,
            ..limits
        }
    );
    // A replacement keeps only what it sets.
    let fewer = UserLimits {
        max_active: Some(10),
        ..UserLimits::default()
    };
    store.user_limits_set(ada, fewer.clone()).await.unwrap();
    assert_eq!(store.user_limits(ada).await.unwrap(), fewer);
    store
        .user_limits_set(ada, UserLimits::default())
        .await
        .unwrap();
    assert!(store.user_limits(ada).await.unwrap().is_default());
    assert_not_found(store.user_limits(UserId(9_999)).await);
    assert_not_found(store.user_limits_set(UserId(9_999), fewer).await);
}
