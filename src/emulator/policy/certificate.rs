//! The certificate policy variables (`iot:Certificate.Subject.CommonName` and friends) of one
//! connection, read once from its client certificate when it connects. AWS's substitution
//! rules are applied here: at most five values per attribute, and a value longer than 1024
//! characters or holding one of `* $ + ? #` is kept but never substituted.

use x509_parser::der_parser::oid::Oid;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// AWS's cap on the values of one multi-valued attribute.
const MAX_VALUES: usize = 5;
/// AWS substitutes no value longer than this.
const MAX_VALUE_CHARS: usize = 1024;

/// The distinguished-name attributes AWS exposes, by their policy-variable names.
const DN_ATTRIBUTES: [(&str, &str); 13] = [
    ("CommonName", "2.5.4.3"),
    ("Surname", "2.5.4.4"),
    ("SerialNumber", "2.5.4.5"),
    ("Country", "2.5.4.6"),
    ("State", "2.5.4.8"),
    ("Organization", "2.5.4.10"),
    ("OrganizationalUnit", "2.5.4.11"),
    ("Title", "2.5.4.12"),
    ("GivenName", "2.5.4.42"),
    ("Initials", "2.5.4.43"),
    ("GenerationQualifier", "2.5.4.44"),
    ("DistinguishedNameQualifier", "2.5.4.46"),
    ("Pseudonym", "2.5.4.65"),
];

/// The alternative-name kinds AWS exposes.
const ALT_NAMES: [&str; 5] = [
    "RFC822Name",
    "DNSName",
    "DirectoryName",
    "UniformResourceIdentifier",
    "IPAddress",
];

/// One field's values; `None` marks a value present but not substitutable.
type Values = Vec<Option<String>>;

/// The certificate fields of one connection, keyed by the lowercase variable suffix after
/// `iot:Certificate.` (e.g. `subject.commonname`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateFields {
    fields: Vec<(String, Values)>,
}

/// Why a client certificate could not be read; the broker then resolves no certificate
/// variable for that connection.
#[derive(Debug, thiserror::Error)]
#[error("client certificate is not parseable x.509: {0}")]
pub struct CertificateFieldsError(String);

impl CertificateFields {
    pub fn from_der(der: &[u8]) -> Result<CertificateFields, CertificateFieldsError> {
        let (_, certificate) = X509Certificate::from_der(der)
            .map_err(|error| CertificateFieldsError(error.to_string()))?;
        let mut fields = CertificateFields::default();
        fields.add_name("subject", certificate.subject());
        fields.add_name("issuer", certificate.issuer());
        fields.add_alt_names(&certificate);
        let serial = certificate.raw_serial_as_string().replace(':', "");
        fields.push("serialnumber", vec![Some(serial)]);
        Ok(fields)
    }

    fn add_name(&mut self, part: &str, name: &X509Name<'_>) {
        for (attribute, oid) in DN_ATTRIBUTES {
            let oid = Oid::from(&oid_arcs(oid)[..]).expect("invariant: constant oids are valid");
            let values = name
                .iter_by_oid(&oid)
                .map(|value| value.as_str().ok().map(str::to_owned))
                .collect();
            self.push(
                &format!("{part}.{}", attribute.to_ascii_lowercase()),
                values,
            );
        }
    }

    fn add_alt_names(&mut self, certificate: &X509Certificate<'_>) {
        let Ok(Some(extension)) = certificate.subject_alternative_name() else {
            return;
        };
        for kind in ALT_NAMES {
            let values = extension
                .value
                .general_names
                .iter()
                .filter_map(|name| alt_name(kind, name))
                .collect();
            let key = format!("subject.alternativename.{}", kind.to_ascii_lowercase());
            self.push(&key, values);
        }
    }

    fn push(&mut self, key: &str, values: Values) {
        if values.is_empty() {
            return;
        }
        let values = values
            .into_iter()
            .take(MAX_VALUES)
            .map(|value| value.filter(|v| substitutable(v)))
            .collect();
        self.fields.push((key.to_owned(), values));
    }

    /// Value `index` (0 is the first) of a field, by its lowercase key.
    pub fn value(&self, key: &str, index: usize) -> Option<&str> {
        self.values(key)?.get(index)?.as_deref()
    }

    /// Every value of a field; `None` when any of them is not substitutable.
    pub fn list(&self, key: &str) -> Option<Vec<&str>> {
        self.values(key)?.iter().map(Option::as_deref).collect()
    }

    fn values(&self, key: &str) -> Option<&Values> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

fn oid_arcs(dotted: &str) -> Vec<u64> {
    dotted
        .split('.')
        .map(|arc| arc.parse().expect("invariant: constant oids are numeric"))
        .collect()
}

fn alt_name(kind: &str, name: &GeneralName<'_>) -> Option<Option<String>> {
    let value = match (kind, name) {
        ("RFC822Name", GeneralName::RFC822Name(v)) => (*v).to_owned(),
        ("DNSName", GeneralName::DNSName(v)) => (*v).to_owned(),
        ("UniformResourceIdentifier", GeneralName::URI(v)) => (*v).to_owned(),
        ("DirectoryName", GeneralName::DirectoryName(v)) => v.to_string(),
        ("IPAddress", GeneralName::IPAddress(bytes)) => ip_text(bytes)?,
        _ => return None,
    };
    Some(Some(value))
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

/// AWS leaves a value unsubstituted when it is long or holds a wildcard character, so a
/// certificate cannot widen a policy through its own subject.
fn substitutable(value: &str) -> bool {
    value.chars().count() <= MAX_VALUE_CHARS && !value.contains(['*', '$', '+', '?', '#'])
}
