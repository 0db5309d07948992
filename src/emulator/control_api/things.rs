//! DescribeThing and the thing-principal operations: attach, detach and a
//! paged list of a thing's certificates.
//!
//! Principals travel as certificate ARNs in the `x-amzn-principal` header.
//! A page token is the id of the last certificate returned, so paging stays
//! stable while certificates are attached and detached between pages.

use serde_json::{Value, json};

use super::Service;
use super::certificates::parse_certificate_id;
use super::error::ApiError;
use super::request::Call;
use crate::emulator::registry::Registry;

/// Page size when the caller sends no `maxResults` [unverified: AWS's own
/// default is not documented].
const DEFAULT_PAGE_SIZE: usize = 25;
/// The model's upper bound for `maxResults`.
const MAX_PAGE_SIZE: usize = 250;

pub(super) fn describe(service: &Service, name: &str) -> Result<Value, ApiError> {
    let thing = service
        .registry
        .thing(name)
        .ok_or_else(|| ApiError::ResourceNotFound(format!("thing {name} does not exist")))?;
    Ok(json!({
        "defaultClientId": thing.name,
        "thingName": thing.name,
        "thingId": thing.id,
        "thingArn": thing.arn,
        "attributes": thing.attributes,
        "version": thing.version,
    }))
}

pub(super) fn attach_principal(
    service: &Service,
    call: &Call,
    thing: &str,
) -> Result<Value, ApiError> {
    if call.query("thingPrincipalType") == Some("EXCLUSIVE_THING") {
        return Err(ApiError::InvalidRequest(
            "exclusive thing attachments are not supported by the emulator".into(),
        ));
    }
    let certificate_id = principal_certificate(call)?;
    service
        .registry
        .attach_thing_principal(thing, &certificate_id)?;
    Ok(json!({}))
}

pub(super) fn detach_principal(
    service: &Service,
    call: &Call,
    thing: &str,
) -> Result<Value, ApiError> {
    let certificate_id = principal_certificate(call)?;
    service
        .registry
        .detach_thing_principal(thing, &certificate_id)?;
    Ok(json!({}))
}

pub(super) fn list_principals(
    service: &Service,
    call: &Call,
    thing: &str,
) -> Result<Value, ApiError> {
    let page_size = page_size(call.query("maxResults"))?;
    let after = call.query("nextToken").map(page_token).transpose()?;
    let ids = service.registry.thing_principals(thing)?;
    let (page, next_token) = page_of(&ids, after.as_deref(), page_size);
    let principals: Vec<String> = page
        .iter()
        .map(|id| service.registry.arn("cert", id))
        .collect();
    let mut output = json!({ "principals": principals });
    if let Some(token) = next_token {
        output["nextToken"] = json!(token);
    }
    Ok(output)
}

/// The page after `after` in the sorted ids, and the token for the next
/// page when more remain.
fn page_of<'a>(
    ids: &'a [String],
    after: Option<&str>,
    size: usize,
) -> (&'a [String], Option<&'a str>) {
    let start = after.map_or(0, |after| ids.partition_point(|id| id.as_str() <= after));
    let end = ids.len().min(start + size);
    let page = &ids[start..end];
    let next = (end < ids.len())
        .then(|| page.last().map(String::as_str))
        .flatten();
    (page, next)
}

fn page_size(text: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = text else {
        return Ok(DEFAULT_PAGE_SIZE);
    };
    match text.parse::<usize>() {
        Ok(size) if (1..=MAX_PAGE_SIZE).contains(&size) => Ok(size),
        _ => Err(ApiError::InvalidRequest(format!(
            "maxResults {text} must be between 1 and {MAX_PAGE_SIZE}"
        ))),
    }
}

fn page_token(text: &str) -> Result<String, ApiError> {
    parse_certificate_id(text).map_err(|_| {
        ApiError::InvalidRequest(format!("nextToken {text} was not issued by this service"))
    })
}

fn principal_certificate(call: &Call) -> Result<String, ApiError> {
    let principal = call.required_header("x-amzn-principal")?;
    let id = Registry::certificate_id_from_arn(principal).ok_or_else(|| {
        ApiError::InvalidRequest(format!(
            "principal {principal} is not a certificate ARN; the emulator knows only certificates"
        ))
    })?;
    parse_certificate_id(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:064x}")).collect()
    }

    #[test]
    fn pages_resume_after_the_token_and_the_last_page_has_no_token() {
        let ids = ids(5);

        let (first, token) = page_of(&ids, None, 2);
        let (second, token2) = page_of(&ids, token, 2);
        let (third, token3) = page_of(&ids, token2, 2);

        assert_eq!(first, &ids[0..2]);
        assert_eq!(second, &ids[2..4]);
        assert_eq!(third, &ids[4..5]);
        assert_eq!(token3, None);
    }

    #[test]
    fn an_exactly_full_last_page_has_no_token() {
        let ids = ids(4);

        let (_, token) = page_of(&ids, None, 4);

        assert_eq!(token, None);
    }

    #[test]
    fn page_size_outside_the_model_range_is_refused() {
        assert!(page_size(Some("0")).is_err());
        assert!(page_size(Some("251")).is_err());
        assert_eq!(page_size(None), Ok(DEFAULT_PAGE_SIZE));
    }
}
