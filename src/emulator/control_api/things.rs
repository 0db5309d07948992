//! DescribeThing, ListThings, DeleteThing and the thing-principal
//! operations: attach, detach (optionally with AWS's propagation delay) and
//! a paged list of a thing's certificates.
//!
//! Principals travel as certificate ARNs in the `x-amzn-principal` header.
//! A page token is the key (certificate id, thing name) of the last item
//! returned, so paging stays stable while items come and go between pages.

use serde_json::{Value, json};

use super::Service;
use super::certificates::parse_certificate_id;
use super::error::ApiError;
use super::request::Call;
use crate::emulator::registry::{Registry, ThingRecord};

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
    let mut output = json!({
        "defaultClientId": thing.name,
        "thingName": thing.name,
        "thingId": thing.id,
        "thingArn": thing.arn,
        "attributes": thing.attributes,
        "version": thing.version,
    });
    if let Some(thing_type) = &thing.thing_type {
        output["thingTypeName"] = json!(thing_type);
    }
    Ok(output)
}

/// Deleting a missing thing succeeds, as on AWS.
pub(super) fn delete(service: &Service, call: &Call, name: &str) -> Result<Value, ApiError> {
    let expected = call.expected_version()?;
    service.registry.delete_thing(name, expected)?;
    Ok(json!({}))
}

/// Things in name order, filtered by `attributeName`/`attributeValue` and
/// `thingTypeName`, paged by `maxResults` and `nextToken`.
pub(super) fn list(service: &Service, call: &Call) -> Result<Value, ApiError> {
    let size = page_size(call.query("maxResults"))?;
    let after = call.query("nextToken").map(str::to_owned);
    let mut things: Vec<ThingRecord> = service
        .registry
        .things()
        .into_iter()
        .filter(|thing| list_filter(call, thing))
        .collect();
    things.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<String> = things.iter().map(|t| t.name.clone()).collect();
    let (page, next) = page_of(&names, after.as_deref(), size);
    let entries: Vec<Value> = things
        .iter()
        .filter(|thing| page.contains(&thing.name))
        .map(|thing| {
            let mut entry = json!({
                "thingName": thing.name,
                "thingArn": thing.arn,
                "attributes": thing.attributes,
                "version": thing.version,
            });
            if let Some(thing_type) = &thing.thing_type {
                entry["thingTypeName"] = json!(thing_type);
            }
            entry
        })
        .collect();
    let mut output = json!({ "things": entries });
    if let Some(token) = next {
        output["nextToken"] = json!(token);
    }
    Ok(output)
}

fn list_filter(call: &Call, thing: &ThingRecord) -> bool {
    let by_type = call
        .query("thingTypeName")
        .is_none_or(|wanted| thing.thing_type.as_deref() == Some(wanted));
    let by_attribute = match (call.query("attributeName"), call.query("attributeValue")) {
        (Some(name), Some(value)) => thing.attributes.get(name).map(String::as_str) == Some(value),
        (Some(name), None) => thing.attributes.contains_key(name),
        _ => true,
    };
    by_type && by_attribute
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
    let delay = service.settings.detach_propagation_delay;
    if delay.is_zero() {
        service
            .registry
            .detach_thing_principal(thing, &certificate_id)?;
        return Ok(json!({}));
    }
    if service.registry.thing(thing).is_none() {
        return Err(ApiError::ResourceNotFound(format!(
            "thing {thing} does not exist"
        )));
    }
    // AWS answers at once and detaches "within several seconds".
    let registry = std::sync::Arc::clone(&service.registry);
    let thing = thing.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = registry.detach_thing_principal(&thing, &certificate_id);
    });
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
pub(super) fn page_of<'a>(
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

/// A page size under another query name (`pageSize` for certificates and policies).
pub(super) fn page_size_named(call: &Call, name: &str) -> Result<usize, ApiError> {
    page_size(call.query(name)).map_err(|_| {
        ApiError::InvalidRequest(format!("{name} must be between 1 and {MAX_PAGE_SIZE}"))
    })
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

pub(super) fn page_token(text: &str) -> Result<String, ApiError> {
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
