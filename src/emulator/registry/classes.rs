//! Thing types and thing groups: the registry's classes of things. A
//! template may name them, but, as on AWS, only ones that already exist: a
//! missing or deprecated thing type, or a missing group, fails RegisterThing
//! instead of being created on the way.
//!
//! Deletion follows AWS's order: a thing type must be deprecated and have no
//! things before it goes (AWS also waits five minutes after deprecation; the
//! emulator does not), and a group with child groups stays until they go.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{
    Registry, RegistryError, State, ThingProperties, already_exists, delete_conflict, not_found,
    random_id,
};
use crate::emulator::persist::Change;

/// AWS allows at most this many attributes on a thing without a thing type.
pub const MAX_ATTRIBUTES_UNTYPED: usize = 3;
/// And at most this many on a thing with one.
pub const MAX_ATTRIBUTES_TYPED: usize = 50;

/// A thing type; every field defaults, as for [`super::ThingRecord`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThingTypeRecord {
    pub name: String,
    pub id: String,
    pub arn: String,
    pub description: Option<String>,
    pub searchable_attributes: Vec<String>,
    /// When the type was deprecated; a deprecated type takes no new things.
    pub deprecated_at: Option<SystemTime>,
    pub created_at: Option<SystemTime>,
}

/// A static thing group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThingGroupRecord {
    pub name: String,
    pub id: String,
    pub arn: String,
    pub description: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub parent: Option<String>,
    pub version: i64,
    pub created_at: Option<SystemTime>,
}

/// What CreateThingType takes besides the name.
#[derive(Debug, Clone, Default)]
pub struct NewThingType {
    pub description: Option<String>,
    pub searchable_attributes: Vec<String>,
}

/// What CreateThingGroup takes besides the name.
#[derive(Debug, Clone, Default)]
pub struct NewThingGroup {
    pub description: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub parent: Option<String>,
}

impl Registry {
    /// Creates a thing type. Asking again with the same properties returns
    /// the existing type; different properties are refused as on AWS.
    pub fn create_thing_type(
        &self,
        name: &str,
        new: NewThingType,
    ) -> Result<ThingTypeRecord, RegistryError> {
        let mut state = self.lock();
        if let Some(existing) = state.thing_types.get(name) {
            let same = existing.description == new.description
                && existing.searchable_attributes == new.searchable_attributes;
            return match same {
                true => Ok(existing.clone()),
                false => Err(already_exists("thing type", name)),
            };
        }
        let record = ThingTypeRecord {
            name: name.to_owned(),
            id: random_id(),
            arn: self.arn("thingtype", name),
            description: new.description,
            searchable_attributes: new.searchable_attributes,
            deprecated_at: None,
            created_at: Some(SystemTime::now()),
        };
        state.thing_types.insert(name.to_owned(), record.clone());
        self.record(|| Change::ThingType(record.clone()));
        Ok(record)
    }

    pub fn thing_type(&self, name: &str) -> Option<ThingTypeRecord> {
        self.lock().thing_types.get(name).cloned()
    }

    /// Every thing type, in name order.
    pub fn thing_types(&self) -> Vec<ThingTypeRecord> {
        let mut types: Vec<_> = self.lock().thing_types.values().cloned().collect();
        types.sort_by(|a, b| a.name.cmp(&b.name));
        types
    }

    /// Deprecates a thing type, or lifts its deprecation with `undo`.
    pub fn deprecate_thing_type(&self, name: &str, undo: bool) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let record = state
            .thing_types
            .get_mut(name)
            .ok_or_else(|| not_found("thing type", name))?;
        let deprecated_at = (!undo).then(|| record.deprecated_at.unwrap_or_else(SystemTime::now));
        if record.deprecated_at != deprecated_at {
            record.deprecated_at = deprecated_at;
            let record = record.clone();
            self.record(|| Change::ThingType(record));
        }
        Ok(())
    }

    /// Deletes a deprecated thing type that no thing uses any more.
    pub fn delete_thing_type(&self, name: &str) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let record = state
            .thing_types
            .get(name)
            .ok_or_else(|| not_found("thing type", name))?;
        if record.deprecated_at.is_none() {
            return Err(delete_conflict("thing type", name, "deprecate it first"));
        }
        if let Some(thing) = state
            .things
            .values()
            .find(|t| t.thing_type.as_deref() == Some(name))
        {
            let reason = format!("thing {} still has this type", thing.name);
            return Err(delete_conflict("thing type", name, &reason));
        }
        state.thing_types.remove(name);
        self.record(|| Change::ThingTypeRemoved {
            name: name.to_owned(),
        });
        Ok(())
    }

    /// Creates a static thing group under an existing parent, if any.
    /// Asking again with the same properties returns the existing group.
    pub fn create_thing_group(
        &self,
        name: &str,
        new: NewThingGroup,
    ) -> Result<ThingGroupRecord, RegistryError> {
        let mut state = self.lock();
        if let Some(existing) = state.thing_groups.get(name) {
            let same = existing.description == new.description
                && existing.attributes == new.attributes
                && existing.parent == new.parent;
            return match same {
                true => Ok(existing.clone()),
                false => Err(already_exists("thing group", name)),
            };
        }
        if let Some(parent) = &new.parent
            && !state.thing_groups.contains_key(parent)
        {
            return Err(not_found("thing group", parent));
        }
        let record = ThingGroupRecord {
            name: name.to_owned(),
            id: random_id(),
            arn: self.arn("thinggroup", name),
            description: new.description,
            attributes: new.attributes,
            parent: new.parent,
            version: 1,
            created_at: Some(SystemTime::now()),
        };
        state.thing_groups.insert(name.to_owned(), record.clone());
        self.record(|| Change::ThingGroup(record.clone()));
        Ok(record)
    }

    pub fn thing_group(&self, name: &str) -> Option<ThingGroupRecord> {
        self.lock().thing_groups.get(name).cloned()
    }

    /// Every thing group, in name order.
    pub fn thing_groups(&self) -> Vec<ThingGroupRecord> {
        let mut groups: Vec<_> = self.lock().thing_groups.values().cloned().collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        groups
    }

    /// The group's ancestors, the root first.
    pub fn thing_group_ancestors(&self, name: &str) -> Vec<ThingGroupRecord> {
        let state = self.lock();
        let mut chain = Vec::new();
        let mut next = state.thing_groups.get(name).and_then(|g| g.parent.clone());
        while let Some(parent) = next {
            let Some(group) = state.thing_groups.get(&parent) else {
                break;
            };
            next = group.parent.clone();
            chain.push(group.clone());
            if chain.len() > state.thing_groups.len() {
                break;
            }
        }
        chain.reverse();
        chain
    }

    /// Deletes a group and takes its things out of it. A missing group is
    /// not an error, as on AWS; one with child groups is refused.
    pub fn delete_thing_group(
        &self,
        name: &str,
        expected_version: Option<i64>,
    ) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let Some(group) = state.thing_groups.get(name) else {
            return Ok(());
        };
        if let Some(expected) = expected_version.filter(|v| *v != group.version) {
            return Err(RegistryError::VersionConflict {
                name: name.to_owned(),
                expected,
                actual: group.version,
            });
        }
        if let Some(child) = state
            .thing_groups
            .values()
            .find(|g| g.parent.as_deref() == Some(name))
        {
            let reason = format!("it has the child group {}", child.name);
            return Err(delete_conflict("thing group", name, &reason));
        }
        state.thing_groups.remove(name);
        self.record(|| Change::ThingGroupRemoved {
            name: name.to_owned(),
        });
        let members = members_of(&state, name);
        for thing in members {
            if let Some(record) = state.things.get_mut(&thing) {
                record.groups.remove(name);
                record.version += 1;
            }
            self.record_thing(&state, &thing);
        }
        Ok(())
    }

    /// Names of the things in a group, in name order.
    pub fn things_in_group(&self, name: &str) -> Result<Vec<String>, RegistryError> {
        let state = self.lock();
        if !state.thing_groups.contains_key(name) {
            return Err(not_found("thing group", name));
        }
        Ok(members_of(&state, name))
    }

    /// Puts a thing in a group; already being there is not an error.
    pub fn add_thing_to_group(&self, thing: &str, group: &str) -> Result<(), RegistryError> {
        self.change_membership(thing, group, true)
    }

    /// Takes a thing out of a group; not being there is not an error.
    pub fn remove_thing_from_group(&self, thing: &str, group: &str) -> Result<(), RegistryError> {
        self.change_membership(thing, group, false)
    }

    fn change_membership(
        &self,
        thing: &str,
        group: &str,
        member: bool,
    ) -> Result<(), RegistryError> {
        let mut state = self.lock();
        if !state.thing_groups.contains_key(group) {
            return Err(not_found("thing group", group));
        }
        let record = state
            .things
            .get_mut(thing)
            .ok_or_else(|| not_found("thing", thing))?;
        let changed = match member {
            true => record.groups.insert(group.to_owned()),
            false => record.groups.remove(group),
        };
        if changed {
            record.version += 1;
            self.record_thing(&state, thing);
        }
        Ok(())
    }

    /// Whether a thing may take these properties: its type exists and is not
    /// deprecated (unless the thing already had it), its groups exist, and it
    /// has no more attributes than AWS allows.
    pub fn check_thing_properties(
        &self,
        thing: &str,
        properties: &ThingProperties,
    ) -> Result<(), RegistryError> {
        let state = self.lock();
        if let Some(type_name) = &properties.thing_type {
            check_type(&state, thing, type_name)?;
        }
        let missing = properties
            .groups
            .iter()
            .find(|group| !state.thing_groups.contains_key(*group));
        if let Some(group) = missing {
            return Err(not_found("thing group", group));
        }
        check_attribute_count(thing, properties)
    }
}

fn check_type(state: &State, thing: &str, type_name: &str) -> Result<(), RegistryError> {
    let record = state
        .thing_types
        .get(type_name)
        .ok_or_else(|| not_found("thing type", type_name))?;
    let already_typed = state
        .things
        .get(thing)
        .is_some_and(|t| t.thing_type.as_deref() == Some(type_name));
    if record.deprecated_at.is_some() && !already_typed {
        return Err(RegistryError::Invalid {
            reason: format!("thing type {type_name} is deprecated and takes no new things"),
        });
    }
    Ok(())
}

fn check_attribute_count(thing: &str, properties: &ThingProperties) -> Result<(), RegistryError> {
    let limit = match properties.thing_type {
        Some(_) => MAX_ATTRIBUTES_TYPED,
        None => MAX_ATTRIBUTES_UNTYPED,
    };
    if properties.attributes.len() > limit {
        let kind = match properties.thing_type {
            Some(_) => "with",
            None => "without",
        };
        return Err(RegistryError::Invalid {
            reason: format!(
                "thing {thing} would have {} attributes; a thing {kind} a thing type may have at most {limit}",
                properties.attributes.len()
            ),
        });
    }
    Ok(())
}

fn members_of(state: &State, group: &str) -> Vec<String> {
    let members: BTreeSet<String> = state
        .things
        .values()
        .filter(|t| t.groups.contains(group))
        .map(|t| t.name.clone())
        .collect();
    members.into_iter().collect()
}
