//! AWS evidence end to end: real signatures from generated keys, the recorded vector against the
//! built-in key, key choice by region, and the statement count per authentication.

use tonic::Code;

use crate::helpers::*;
use agent_auth::grpc::pb;

fn rsa2048_request(document: &str, pkcs7: &str) -> pb::AuthenticateRequest {
    pb::AuthenticateRequest {
        identity: Some(pb::authenticate_request::Identity::Aws(
            pb::AwsInstanceIdentity {
                document: document.into(),
                signature: String::new(),
                rsa2048: pkcs7.into(),
            },
        )),
        agent_name: String::new(),
    }
}

#[tokio::test]
async fn the_recorded_us_east_1_document_authenticates_with_the_builtin_key() {
    let db = TestDb::migrated().await;
    let agent = seed_agent(&db, RECORDED_INSTANCE).await;
    let app = TestServer::in_process(&db, |_| {}).await;

    let response = success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    assert_eq!(response.session_token, agent.token.to_string());
    assert_eq!(response.instance_id, RECORDED_INSTANCE);
}

#[tokio::test]
async fn one_authentication_runs_exactly_one_statement_and_a_forgery_runs_none() {
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let app = TestServer::in_process(&db, |_| {}).await;
    let channel_warmup = app.channel().await;
    drop(channel_warmup);

    db.reset_statements().await;
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    assert_eq!(
        db.statements().await,
        1,
        "statements for one successful login"
    );

    db.reset_statements().await;
    let forged = RECORDED_DOCUMENT.replace("t2.micro", "m5.24xlarge");
    let (code, _, _) = failure(
        app.authenticate(aws_request(&forged, RECORDED_SIGNATURE, ""))
            .await,
    );
    assert_eq!(code, Code::Unauthenticated);
    assert_eq!(db.statements().await, 0, "statements for a forged document");

    db.reset_statements().await;
    let (code, _, _) = failure(app.authenticate(aws_request(&forged, "", "")).await);
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(
        db.statements().await,
        0,
        "statements for a malformed request"
    );

    // The count does not grow with candidates or history.
    let world = World::new(&db).await;
    let instance = instance_id();
    let ws = world.workspace().await;
    for number in 1..=5 {
        let resource = world.build(ws, number).await;
        world.agent(resource, "a", &instance).await;
        world.agent(resource, "b", &instance).await;
    }
    let key = AwsKey::generate(1024);
    let flag = key.flag("us-east-1");
    let app2 = TestServer::in_process(&db, |c| c.aws.aws_certificate = vec![value(flag)]).await;
    let document = aws_document(&instance, "us-east-1", "123456789012");
    db.reset_statements().await;
    fails_with(
        app2.authenticate(aws_request(&document, &key.sign(&document), ""))
            .await,
        Code::FailedPrecondition,
        "AMBIGUOUS_AGENT",
    );
    success(
        app2.authenticate(aws_request(&document, &key.sign(&document), "b"))
            .await,
    );
    assert_eq!(
        db.statements().await,
        2,
        "one statement per login with 2 candidates and 8 stale agents"
    );
}

#[tokio::test]
async fn the_key_is_chosen_by_the_document_region() {
    let db = TestDb::migrated().await;
    let default_key = AwsKey::generate(1024);
    let hong_kong_key = AwsKey::generate(1024);
    let flags = vec![default_key.flag("default"), hong_kong_key.flag("ap-east-1")];
    let app = TestServer::in_process(&db, |c| c.aws.aws_certificate = values(&flags)).await;

    for (region, key, other) in [
        ("us-east-1", &default_key, &hong_kong_key),
        ("eu-west-3", &default_key, &hong_kong_key),
        ("ap-east-1", &hong_kong_key, &default_key),
    ] {
        let instance = instance_id();
        let agent = seed_agent(&db, &instance).await;
        let document = aws_document(&instance, region, "123456789012");
        let response = success(
            app.authenticate(aws_request(&document, &key.sign(&document), ""))
                .await,
        );
        assert_eq!(
            response.session_token,
            agent.token.to_string(),
            "{region} with its own key"
        );
        let (code, reason, message) = failure(
            app.authenticate(aws_request(&document, &other.sign(&document), ""))
                .await,
        );
        assert_eq!(
            (code, reason.as_str(), message.as_str()),
            (
                Code::Unauthenticated,
                "INVALID_IDENTITY",
                "Invalid AWS identity."
            ),
            "{region} with another region's key"
        );
    }
}

#[tokio::test]
async fn invalid_aws_evidence_is_unauthenticated_with_only_the_fixed_message() {
    let db = TestDb::migrated().await;
    let key = AwsKey::generate(1024);
    let stranger = AwsKey::generate(1024);
    let flag = key.flag("default");
    let app = TestServer::in_process(&db, |c| {
        c.aws.aws_certificate = vec![value(flag)];
        c.aws.aws_allowed_account = vec![value("123456789012")];
    })
    .await;
    let instance = instance_id();
    seed_agent(&db, &instance).await;
    let document = aws_document(&instance, "us-east-1", "123456789012");
    let other_account = aws_document(&instance, "us-east-1", "999999999999");
    let bad_instance = aws_document("i-NOTANID", "us-east-1", "123456789012");
    let signature = key.sign(&document);

    let cases: Vec<(&str, String, String)> = vec![
        (
            "signed by an untrusted key",
            document.clone(),
            stranger.sign(&document),
        ),
        (
            "tampered document",
            document.replace("t3.micro", "t3.large"),
            signature.clone(),
        ),
        (
            "trailing newline added to the document",
            format!("{document}\n"),
            signature.clone(),
        ),
        (
            "signature is not base64",
            document.clone(),
            "%%%not-base64%%%".into(),
        ),
        (
            "signature is truncated",
            document.clone(),
            signature[..40].to_owned(),
        ),
        (
            "document is not JSON",
            "not json".into(),
            key.sign("not json"),
        ),
        (
            "document lacks instanceId",
            "{\"region\":\"us-east-1\",\"accountId\":\"123456789012\"}".into(),
            key.sign("{\"region\":\"us-east-1\",\"accountId\":\"123456789012\"}"),
        ),
        (
            "account not allowed",
            other_account.clone(),
            key.sign(&other_account),
        ),
        (
            "instanceId is not an instance id",
            bad_instance.clone(),
            key.sign(&bad_instance),
        ),
    ];
    for (case, document, signature) in cases {
        db.reset_statements().await;
        let (code, reason, message) = failure(
            app.authenticate(aws_request(&document, &signature, ""))
                .await,
        );
        assert_eq!(code, Code::Unauthenticated, "{case}");
        assert_eq!(reason, "INVALID_IDENTITY", "{case}");
        assert_eq!(
            message, "Invalid AWS identity.",
            "{case}: no verifier detail may leak"
        );
        assert_eq!(
            db.statements().await,
            0,
            "{case}: verified before any query"
        );
    }
    success(
        app.authenticate(aws_request(&document, &signature, ""))
            .await,
    );
}

#[tokio::test]
async fn the_rsa2048_pkcs7_form_verifies_detached_and_attached_and_rejects_forgeries() {
    let db = TestDb::migrated().await;
    let key = AwsKey::generate(2048);
    let stranger = AwsKey::generate(2048);
    let flag = key.flag("default");
    let app =
        TestServer::in_process(&db, |c| c.aws.aws_rsa2048_certificate = vec![value(flag)]).await;
    let instance = instance_id();
    let agent = seed_agent(&db, &instance).await;
    let document = aws_document(&instance, "eu-west-1", "123456789012");

    for detached in [true, false] {
        let pkcs7 = key.sign_pkcs7(&document, detached);
        let response = success(app.authenticate(rsa2048_request(&document, &pkcs7)).await);
        assert_eq!(
            response.session_token,
            agent.token.to_string(),
            "detached={detached}"
        );
        let tampered = document.replace("t3.micro", "t3.large");
        let (code, _, message) =
            failure(app.authenticate(rsa2048_request(&tampered, &pkcs7)).await);
        assert_eq!(
            (code, message.as_str()),
            (Code::Unauthenticated, "Invalid AWS identity."),
            "tampered, detached={detached}"
        );
    }
    let forged = stranger.sign_pkcs7(&document, true);
    fails_with(
        app.authenticate(rsa2048_request(&document, &forged)).await,
        Code::Unauthenticated,
        "INVALID_IDENTITY",
    );
    let (code, _, _) = failure(app.authenticate(rsa2048_request(&document, "AAAA")).await);
    assert_eq!(code, Code::Unauthenticated, "garbage PKCS#7");
}

#[tokio::test]
async fn an_rsa2048_proof_under_a_key_other_than_the_regions_built_in_one_is_refused() {
    let db = TestDb::migrated().await;
    let app = TestServer::in_process(&db, |_| {}).await;
    let key = AwsKey::generate(2048);
    let document = aws_document(&instance_id(), "us-east-1", "123456789012");
    fails_with(
        app.authenticate(rsa2048_request(&document, &key.sign_pkcs7(&document, true)))
            .await,
        Code::Unauthenticated,
        "INVALID_IDENTITY",
    );
}
