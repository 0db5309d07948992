//! MQTT 3.1.1 topic names and topic filters (§4.7) as AWS IoT Core applies them: validation
//! against AWS's limits, a matcher that handles `$aws/...` topics, and the subscription index
//! the broker routes with. rumqttc's own `matches()` never matches a `$` topic, which would
//! break every Fleet Provisioning reply, hence our own.
//!
//! AWS deviations from the specification, on purpose:
//! - `a/#` matches `a/` and everything below it, but **not** the parent `a` itself (the
//!   specification says it does [MQTT-4.7.1-2 non-normative]; IoT Core says it does not).
//! - A topic or filter is at most 256 bytes with at most 7 slashes, not counting a
//!   `$aws/rules/<rule>/` Basic Ingest prefix.
//! - Every `$` topic is reserved and only `$aws/...` may be used.
//!
//! The index is a trie over topic levels rather than an exact-topic map plus a wildcard list:
//! fleets subscribe mostly to per-device wildcard filters (`cmd/<thing>/#`), and a wildcard list
//! would be scanned in full for every publish, which is quadratic in the fleet size. The trie
//! visits only the branches a topic can reach: at most two per level (the literal and `+`).

use std::collections::HashMap;
use std::hash::Hash;

/// AWS's limit on a topic name or filter, in bytes of UTF-8.
pub const MAX_TOPIC_BYTES: usize = 256;

/// AWS's limit on the slashes in a topic name or filter (8 levels).
pub const MAX_TOPIC_SLASHES: usize = 7;

/// Why a topic name or filter sent by a client is not acceptable; always the client's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("client sent an empty topic [MQTT-4.7.3-1]")]
    Empty,
    #[error("client sent a topic of {len} bytes, more than the {max} AWS allows")]
    TooLong { len: usize, max: usize },
    #[error("client sent a topic with {slashes} slashes, more than the {max} AWS allows")]
    TooDeep { slashes: usize, max: usize },
    #[error("client sent a topic containing the null character [MQTT-4.7.3-2]")]
    NullCharacter,
    #[error("client sent a wildcard in a topic name [MQTT-3.3.2-2]")]
    WildcardInName,
    #[error("client sent a misplaced wildcard in filter level {level:?} [MQTT-4.7.1-2/3]")]
    MisplacedWildcard { level: String },
    #[error("client used the reserved topic {topic:?}; only $aws/ topics exist")]
    Reserved { topic: String },
}

/// Checks a topic name a client publishes to.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    validate_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter a client subscribes to.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    validate_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        let misplaced = match level {
            "+" => false,
            "#" => !is_last,
            _ => level.contains(['+', '#']),
        };
        if misplaced {
            return Err(TopicError::MisplacedWildcard {
                level: level.to_owned(),
            });
        }
    }
    Ok(())
}

fn validate_common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    if topic.starts_with('$') && !topic.starts_with("$aws/") {
        return Err(TopicError::Reserved {
            topic: topic.to_owned(),
        });
    }
    check_aws_limits(without_rules_prefix(topic))
}

fn check_aws_limits(counted: &str) -> Result<(), TopicError> {
    if counted.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong {
            len: counted.len(),
            max: MAX_TOPIC_BYTES,
        });
    }
    let slashes = counted.bytes().filter(|&b| b == b'/').count();
    if slashes > MAX_TOPIC_SLASHES {
        return Err(TopicError::TooDeep {
            slashes,
            max: MAX_TOPIC_SLASHES,
        });
    }
    Ok(())
}

/// The part of a topic that AWS's limits apply to: Basic Ingest's `$aws/rules/<rule>/` prefix
/// does not count.
fn without_rules_prefix(topic: &str) -> &str {
    let Some(rest) = topic.strip_prefix("$aws/rules/") else {
        return topic;
    };
    match rest.split_once('/') {
        Some((_rule, tail)) => tail,
        None => topic,
    }
}

/// Whether a valid `filter` matches a valid topic name, per §4.7 and AWS's `#` rule.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        // [MQTT-4.7.2-1]
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            // AWS: `#` needs at least one more level, so `a/#` misses `a`.
            "#" => return topic_levels.next().is_some(),
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// Subscriptions of many subscribers (`K`, e.g. a connection id) to valid filters, each with a
/// value (e.g. the granted QoS). A subscriber holds at most one value per filter.
#[derive(Debug)]
pub struct SubscriptionIndex<K, V> {
    root: Node<K, V>,
    len: usize,
}

#[derive(Debug)]
struct Node<K, V> {
    /// Next levels, `+` included as a literal key: a topic level never equals `+`.
    children: HashMap<Box<str>, Node<K, V>>,
    /// Subscribers whose filter ends at this node.
    exact: HashMap<K, V>,
    /// Subscribers whose filter is this node followed by `#`.
    multi: HashMap<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            exact: HashMap::new(),
            multi: HashMap::new(),
        }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.exact.is_empty() && self.multi.is_empty()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Default for SubscriptionIndex<K, V> {
    fn default() -> Self {
        SubscriptionIndex {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SubscriptionIndex<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (subscriber, filter) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces `key`'s subscription to `filter`; returns the replaced value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut levels: Vec<&str> = filter.split('/').collect();
        let multi = levels.last() == Some(&"#");
        if multi {
            levels.pop();
        }
        let mut node = &mut self.root;
        for level in levels {
            node = node.children.entry(level.into()).or_default();
        }
        let slot = if multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        let previous = slot.insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes `key`'s subscription to `filter`, pruning branches left empty.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Every (subscriber, value) whose filter matches `topic`; a subscriber appears once per
    /// matching filter.
    pub fn matches(&self, topic: &str) -> Vec<(K, V)> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut found = Vec::new();
        let wildcards_at_root = !topic.starts_with('$');
        collect(&self.root, &levels, wildcards_at_root, &mut found);
        found
    }
}

fn remove_at<K: Eq + Hash, V>(node: &mut Node<K, V>, levels: &[&str], key: &K) -> Option<V> {
    match levels {
        [] => node.exact.remove(key),
        ["#"] => node.multi.remove(key),
        [level, rest @ ..] => {
            let child = node.children.get_mut(*level)?;
            let removed = remove_at(child, rest, key);
            if child.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}

fn collect<K: Clone, V: Clone>(
    node: &Node<K, V>,
    levels: &[&str],
    wildcards_here: bool,
    found: &mut Vec<(K, V)>,
) {
    let Some((level, rest)) = levels.split_first() else {
        found.extend(node.exact.iter().map(|(k, v)| (k.clone(), v.clone())));
        return;
    };
    if wildcards_here {
        // `#` here needs at least this one remaining level (AWS rule), which there is.
        found.extend(node.multi.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(child) = node.children.get("+") {
            collect(child, rest, true, found);
        }
    }
    if let Some(child) = node.children.get(*level) {
        collect(child, rest, true, found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topic_names_within_aws_limits_are_accepted() {
        for topic in [
            "a",
            "a/b",
            "/",
            "a//b",
            "$aws/things/t1/shadow/update",
            "dt/é/x",
        ] {
            assert_eq!(validate_topic_name(topic), Ok(()), "{topic}");
        }
    }

    #[test]
    fn topic_names_break_rules_byte_by_byte() {
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a+b"), Err(TopicError::WildcardInName));
        assert!(matches!(
            validate_topic_name("$SYS/x"),
            Err(TopicError::Reserved { .. })
        ));
        assert!(matches!(
            validate_topic_name("$aws"),
            Err(TopicError::Reserved { .. })
        ));
    }

    #[test]
    fn the_256_byte_limit_counts_bytes_not_characters() {
        assert_eq!(validate_topic_name(&"a".repeat(256)), Ok(()));
        let too_long = validate_topic_name(&"a".repeat(257));
        assert_eq!(too_long, Err(TopicError::TooLong { len: 257, max: 256 }));
        // 'é' is two bytes in UTF-8: 129 characters are 258 bytes.
        let wide = validate_topic_name(&"é".repeat(129));
        assert_eq!(wide, Err(TopicError::TooLong { len: 258, max: 256 }));
    }

    #[test]
    fn seven_slashes_pass_and_eight_fail() {
        assert_eq!(validate_topic_name("1/2/3/4/5/6/7/8"), Ok(()));
        let deep = validate_topic_name("1/2/3/4/5/6/7/8/9");
        assert_eq!(deep, Err(TopicError::TooDeep { slashes: 8, max: 7 }));
        assert_eq!(validate_topic_filter("1/2/3/4/5/6/7/#"), Ok(()));
    }

    #[test]
    fn the_basic_ingest_prefix_does_not_count_toward_limits() {
        let topic = format!("$aws/rules/my_rule/{}", "a/".repeat(7) + "a");
        assert_eq!(validate_topic_name(&topic), Ok(()));
        let long = format!("$aws/rules/r/{}", "a".repeat(256));
        assert_eq!(validate_topic_name(&long), Ok(()));
    }

    #[test]
    fn filters_place_wildcards_only_as_whole_levels() {
        for filter in [
            "#",
            "+",
            "a/+/b",
            "a/#",
            "+/+",
            "$aws/things/+/shadow/#",
            "/#",
        ] {
            assert_eq!(validate_topic_filter(filter), Ok(()), "{filter}");
        }
        for filter in ["a#", "a/#/b", "a/b+", "+a/b", "#/a", "a/##"] {
            let error = validate_topic_filter(filter);
            assert!(
                matches!(error, Err(TopicError::MisplacedWildcard { .. })),
                "{filter}"
            );
        }
    }

    #[test]
    fn single_level_wildcard_matches_exactly_one_level() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/+", "a/"));
        assert!(matches("+/+", "/"));
        assert!(!matches("a/+", "a"));
        assert!(!matches("a/+", "a/b/c"));
    }

    #[test]
    fn multi_level_wildcard_matches_below_but_not_the_parent_on_aws() {
        assert!(matches("a/#", "a/b"));
        assert!(matches("a/#", "a/"));
        assert!(matches("a/#", "a/b/c/d"));
        assert!(!matches("a/#", "a"));
        assert!(matches("#", "a"));
        assert!(matches("#", "/"));
    }

    #[test]
    fn wildcards_at_the_first_level_never_match_dollar_topics() {
        assert!(!matches("#", "$aws/things/t/shadow/update"));
        assert!(!matches(
            "+/things/t/shadow/update",
            "$aws/things/t/shadow/update"
        ));
        assert!(matches(
            "$aws/things/+/shadow/update",
            "$aws/things/t/shadow/update"
        ));
        assert!(matches(
            "$aws/certificates/create/#",
            "$aws/certificates/create/json/accepted"
        ));
        assert!(matches("$aws/#", "$aws/x"));
    }

    #[test]
    fn index_returns_each_matching_subscription() {
        let mut index = SubscriptionIndex::new();
        index.insert("a/b", 1, 'x');
        index.insert("a/+", 1, 'y');
        index.insert("a/#", 2, 'z');
        index.insert("#", 3, 'w');
        index.insert("$aws/x/+", 4, 'v');
        let mut found = index.matches("a/b");
        found.sort();
        assert_eq!(found, vec![(1, 'x'), (1, 'y'), (2, 'z'), (3, 'w')]);
        assert_eq!(index.matches("a"), vec![(3, 'w')]);
        assert_eq!(index.matches("$aws/x/y"), vec![(4, 'v')]);
    }

    #[test]
    fn index_replaces_a_resubscription_and_prunes_on_remove() {
        let mut index = SubscriptionIndex::new();
        assert_eq!(index.insert("a/+/c", 7, 0), None);
        assert_eq!(index.insert("a/+/c", 7, 1), Some(0));
        assert_eq!(index.len(), 1);
        assert_eq!(index.remove("a/+/c", &7), Some(1));
        assert_eq!(index.remove("a/+/c", &7), None);
        assert!(index.is_empty());
        assert!(index.root.is_empty());
    }

    fn level() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "", "$aws", "things", "é"])
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..6).prop_map(|levels| levels.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "", "$aws", "things", "+"]);
        (prop::collection::vec(level, 1..6), any::<bool>()).prop_map(|(mut levels, multi)| {
            if multi {
                levels.push("#");
            }
            levels.join("/")
        })
    }

    proptest! {
        #[test]
        fn every_valid_topic_matches_itself_as_a_filter(topic in topic()) {
            prop_assume!(validate_topic_name(&topic).is_ok());
            prop_assert!(matches(&topic, &topic));
        }

        #[test]
        fn names_with_wildcards_are_never_valid(prefix in topic(), wildcard in "[+#]") {
            let name = format!("{prefix}{wildcard}");
            prop_assert!(validate_topic_name(&name).is_err());
        }

        #[test]
        fn hash_matches_exactly_the_topics_not_starting_with_dollar(topic in topic()) {
            prop_assert_eq!(matches("#", &topic), !topic.starts_with('$'));
        }

        #[test]
        fn a_plus_in_place_of_a_later_level_still_matches(topic in topic(), at in 1usize..6) {
            let mut levels: Vec<&str> = topic.split('/').collect();
            prop_assume!(at < levels.len());
            levels[at] = "+";
            prop_assert!(matches(&levels.join("/"), &topic));
        }

        #[test]
        fn the_index_agrees_with_the_matcher(
            filters in prop::collection::vec(filter(), 1..20),
            topic in topic(),
        ) {
            let mut index = SubscriptionIndex::new();
            for (key, filter) in filters.iter().enumerate() {
                index.insert(filter, key, ());
            }
            let mut found: Vec<usize> = index.matches(&topic).into_iter().map(|(k, ())| k).collect();
            found.sort();
            let expected: Vec<usize> = filters
                .iter()
                .enumerate()
                .filter(|(_, filter)| matches(filter, &topic))
                .map(|(key, _)| key)
                .collect();
            prop_assert_eq!(found, expected);
        }

        #[test]
        fn removing_every_subscription_empties_the_index(
            filters in prop::collection::vec(filter(), 1..20),
        ) {
            let mut index = SubscriptionIndex::new();
            for (key, filter) in filters.iter().enumerate() {
                index.insert(filter, key, ());
            }
            for (key, filter) in filters.iter().enumerate() {
                prop_assert_eq!(index.remove(filter, &key), Some(()));
            }
            prop_assert!(index.is_empty());
            prop_assert!(index.root.is_empty());
        }
    }
}
