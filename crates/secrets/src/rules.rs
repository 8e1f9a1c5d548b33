//! The rule table. Each rule names the keywords that must occur in a file before its
//! regex is run; keywords are matched case-insensitively. The regex's first capture
//! group, when it has one, is the secret itself (what is redacted and fingerprinted).

use crate::Severity;

/// What kind of secret a rule finds, for grouping in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A private key (PEM, OpenSSH, PGP, PuTTY, age).
    PrivateKey,
    /// A cloud provider credential (AWS, GCP, Azure, DigitalOcean).
    Cloud,
    /// A source-hosting or CI token (GitHub, GitLab).
    SourceControl,
    /// A package registry token (npm, PyPI, Docker).
    Registry,
    /// A SaaS API key (Slack, Stripe, SendGrid, model providers, ...).
    ApiKey,
    /// A credential embedded in a URL or connection string.
    ConnectionString,
    /// A token for Kubernetes, Vault or Terraform.
    Infrastructure,
    /// A generic assignment of a password or secret.
    Generic,
}

/// One detection rule.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Stable id, used in reports, allow-lists and SARIF ("aws-access-key-id").
    pub id: &'static str,
    /// What it finds, in words.
    pub title: &'static str,
    /// Group.
    pub kind: Kind,
    /// Default severity.
    pub severity: Severity,
    /// At least one must occur (case-insensitively) for the regex to run.
    pub keywords: &'static [&'static str],
    /// The pattern. Group 1, if present, is the secret.
    pub regex: &'static str,
    /// Minimum Shannon entropy (bits per byte) of the secret, for rules whose
    /// pattern alone also matches ordinary words.
    pub min_entropy: Option<f32>,
}

impl Rule {
    /// How far past a keyword a match of this rule can end: the regex runs only on
    /// windows this wide around keyword hits, never on a whole file.
    pub fn span(&self) -> usize {
        match self.kind {
            // An RSA-8192 PEM body is about 6.3 KB; PuTTY keys and kubeconfigs less.
            Kind::PrivateKey => 16 << 10,
            _ => 1 << 10,
        }
    }
}

/// Body of a PEM block: base64 lines, plus the Proc-Type/DEK-Info headers of
/// encrypted traditional keys. At least 64 characters, so a lone header (in
/// documentation or source code) does not count.
///
/// Lines end in real line breaks or in the escapes a key carries inside a JSON or
/// YAML string (`\n`, `\r\n`), and may be indented (a YAML block scalar); `\/` is
/// JSON's escaped slash.
macro_rules! pem {
    ($label:literal) => {
        concat!(
            "-----BEGIN ",
            $label,
            "-----",
            pem_break!(),
            "((?:(?:[A-Za-z0-9+/=:,\\- ]|\\\\/)*",
            pem_break!(),
            ")*?[ \\t]*[A-Za-z0-9+/=]{16,}[\\s\\S]{0,200}?)-----END ",
            $label,
            "-----"
        )
    };
}

/// A line break in a PEM block: real, or escaped inside a string.
macro_rules! pem_break {
    () => {
        "(?:[\\r\\n]|\\\\[rn])+"
    };
}

use Kind::*;
use Severity::*;

/// Every rule amiforge knows.
pub const RULES: &[Rule] = &[
    // --- Private keys ---
    Rule {
        id: "private-key-rsa",
        title: "RSA private key (PKCS#1 PEM)",
        kind: PrivateKey,
        severity: Critical,
        keywords: &["BEGIN RSA PRIVATE KEY"],
        regex: pem!("RSA PRIVATE KEY"),
        min_entropy: None,
    },
    Rule {
        id: "private-key-ec",
        title: "EC private key (SEC1 PEM)",
        kind: PrivateKey,
        severity: Critical,
        keywords: &["BEGIN EC PRIVATE KEY"],
        regex: pem!("EC PRIVATE KEY"),
        min_entropy: None,
    },
    Rule {
        id: "private-key-dsa",
        title: "DSA private key (PEM)",
        kind: PrivateKey,
        severity: Critical,
        keywords: &["BEGIN DSA PRIVATE KEY"],
        regex: pem!("DSA PRIVATE KEY"),
        min_entropy: None,
    },
    Rule {
        id: "private-key-openssh",
        title: "OpenSSH private key",
        kind: PrivateKey,
        severity: Critical,
        keywords: &["BEGIN OPENSSH PRIVATE KEY"],
        regex: pem!("OPENSSH PRIVATE KEY"),
        min_entropy: None,
    },
    Rule {
        id: "private-key-pkcs8",
        title: "PKCS#8 private key (PEM)",
        kind: PrivateKey,
        severity: Critical,
        keywords: &["BEGIN PRIVATE KEY"],
        regex: pem!("PRIVATE KEY"),
        min_entropy: None,
    },
    Rule {
        id: "private-key-pkcs8-encrypted",
        title: "Encrypted PKCS#8 private key (PEM)",
        kind: PrivateKey,
        severity: High,
        keywords: &["BEGIN ENCRYPTED PRIVATE KEY"],
        regex: pem!("ENCRYPTED PRIVATE KEY"),
        min_entropy: None,
    },
    Rule {
        id: "private-key-pgp",
        title: "PGP private key block",
        kind: PrivateKey,
        severity: Critical,
        keywords: &["BEGIN PGP PRIVATE KEY BLOCK"],
        regex: pem!("PGP PRIVATE KEY BLOCK"),
        min_entropy: None,
    },
    Rule {
        id: "private-key-putty",
        title: "PuTTY private key file",
        kind: PrivateKey,
        severity: Critical,
        keywords: &["PuTTY-User-Key-File-"],
        regex: r"PuTTY-User-Key-File-[23]: [a-z0-9-]+\r?\n(?:[^\r\n]*\r?\n){1,12}?Private-Lines: \d+\r?\n([A-Za-z0-9+/=]{16,})",
        min_entropy: None,
    },
    Rule {
        id: "private-key-age",
        title: "age secret key",
        kind: PrivateKey,
        severity: Critical,
        keywords: &["AGE-SECRET-KEY-1"],
        regex: r"\b(AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58})\b",
        min_entropy: None,
    },
    // --- Cloud ---
    Rule {
        id: "aws-access-key-id",
        title: "AWS access key id",
        kind: Cloud,
        severity: High,
        keywords: &["AKIA", "ASIA", "ABIA", "ACCA", "A3T"],
        regex: r"\b((?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z2-7]{16})\b",
        min_entropy: None,
    },
    Rule {
        id: "aws-secret-access-key",
        title: "AWS secret access key",
        kind: Cloud,
        severity: Critical,
        keywords: &["secret_access_key", "secretaccesskey", "secret-access-key"],
        regex: r#"(?i)secret[_-]?access[_-]?key["']?\s*[:=]\s*["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+]|$)"#,
        min_entropy: Some(3.5),
    },
    Rule {
        id: "aws-session-token",
        title: "AWS session token",
        kind: Cloud,
        severity: High,
        keywords: &["session_token", "sessiontoken", "security_token"],
        regex: r#"(?i)(?:session|security)_?token["']?\s*[:=]\s*["']?([A-Za-z0-9/+=]{100,})"#,
        min_entropy: Some(4.0),
    },
    Rule {
        id: "gcp-service-account-key",
        title: "Google Cloud service-account key (JSON)",
        kind: Cloud,
        severity: Critical,
        // The key file's structure, not one field's length: its type, then the key's
        // id (of whatever length) and the private key itself.
        keywords: &["\"service_account\""],
        regex: r#""type"\s*:\s*"service_account"[\s\S]{0,1000}?"private_key_id"\s*:\s*"([A-Za-z0-9]{8,128})"[\s\S]{0,1000}?"private_key"\s*:\s*"-----BEGIN"#,
        min_entropy: None,
    },
    Rule {
        id: "gcp-api-key",
        title: "Google API key",
        kind: Cloud,
        severity: High,
        keywords: &["AIza"],
        regex: r"\b(AIza[0-9A-Za-z_\-]{35})(?:[^0-9A-Za-z_\-]|$)",
        min_entropy: None,
    },
    Rule {
        id: "google-oauth-client-secret",
        title: "Google OAuth client secret",
        kind: Cloud,
        severity: High,
        keywords: &["GOCSPX-"],
        regex: r"\b(GOCSPX-[A-Za-z0-9_\-]{28})",
        min_entropy: None,
    },
    Rule {
        id: "azure-storage-connection-string",
        title: "Azure storage connection string with an account key",
        kind: Cloud,
        severity: Critical,
        keywords: &["AccountKey="],
        regex: r"AccountName=[^;\s]+;AccountKey=([A-Za-z0-9+/]{86}==)",
        min_entropy: None,
    },
    Rule {
        id: "azure-sas-token",
        title: "Azure shared access signature",
        kind: Cloud,
        severity: High,
        keywords: &["sig="],
        regex: r"\bsv=\d{4}-\d{2}-\d{2}&[^\s\x22']*?\bsig=([A-Za-z0-9%+/=]{40,})",
        min_entropy: None,
    },
    Rule {
        id: "azure-ad-client-secret",
        title: "Azure AD (Entra ID) client secret",
        kind: Cloud,
        severity: High,
        keywords: &["Q~"],
        regex: r"(?:^|[^A-Za-z0-9_~.\-])([A-Za-z0-9_~.\-]{3}\dQ~[A-Za-z0-9_~.\-]{31,34})(?:[^A-Za-z0-9_~.\-]|$)",
        min_entropy: Some(3.5),
    },
    Rule {
        id: "digitalocean-token",
        title: "DigitalOcean personal access token",
        kind: Cloud,
        severity: High,
        keywords: &["dop_v1_", "doo_v1_", "dor_v1_"],
        regex: r"\b(do[opr]_v1_[a-f0-9]{64})\b",
        min_entropy: None,
    },
    // --- Source control ---
    Rule {
        id: "github-pat",
        title: "GitHub personal access token (classic)",
        kind: SourceControl,
        severity: High,
        keywords: &["ghp_"],
        regex: r"\b(ghp_[A-Za-z0-9]{36})\b",
        min_entropy: None,
    },
    Rule {
        id: "github-oauth-token",
        title: "GitHub OAuth access token",
        kind: SourceControl,
        severity: High,
        keywords: &["gho_"],
        regex: r"\b(gho_[A-Za-z0-9]{36})\b",
        min_entropy: None,
    },
    Rule {
        id: "github-user-to-server-token",
        title: "GitHub App user-to-server token",
        kind: SourceControl,
        severity: High,
        keywords: &["ghu_"],
        regex: r"\b(ghu_[A-Za-z0-9]{36})\b",
        min_entropy: None,
    },
    Rule {
        id: "github-server-to-server-token",
        title: "GitHub App installation token",
        kind: SourceControl,
        severity: High,
        keywords: &["ghs_"],
        regex: r"\b(ghs_[A-Za-z0-9]{36})\b",
        min_entropy: None,
    },
    Rule {
        id: "github-refresh-token",
        title: "GitHub refresh token",
        kind: SourceControl,
        severity: High,
        keywords: &["ghr_"],
        regex: r"\b(ghr_[A-Za-z0-9]{36,76})\b",
        min_entropy: None,
    },
    Rule {
        id: "github-fine-grained-pat",
        title: "GitHub fine-grained personal access token",
        kind: SourceControl,
        severity: High,
        keywords: &["github_pat_"],
        regex: r"\b(github_pat_[A-Za-z0-9_]{82})\b",
        min_entropy: None,
    },
    Rule {
        id: "gitlab-pat",
        title: "GitLab personal access token",
        kind: SourceControl,
        severity: High,
        keywords: &["glpat-"],
        regex: r"\b(glpat-[A-Za-z0-9_\-]{20,})",
        min_entropy: None,
    },
    Rule {
        id: "gitlab-runner-token",
        title: "GitLab runner authentication token",
        kind: SourceControl,
        severity: High,
        keywords: &["glrt-"],
        regex: r"\b(glrt-[A-Za-z0-9_\-]{20,})",
        min_entropy: None,
    },
    // --- Registries ---
    Rule {
        id: "npm-token",
        title: "npm access token",
        kind: Registry,
        severity: High,
        keywords: &["npm_"],
        regex: r"\b(npm_[A-Za-z0-9]{36})\b",
        min_entropy: None,
    },
    Rule {
        id: "npmrc-auth-token",
        title: "Registry auth token in an .npmrc",
        kind: Registry,
        severity: High,
        keywords: &["_authToken"],
        regex: r"//[^\s]+/:_authToken=([A-Za-z0-9_\-.]{20,})",
        min_entropy: Some(3.0),
    },
    Rule {
        id: "pypi-token",
        title: "PyPI upload token",
        kind: Registry,
        severity: High,
        keywords: &["pypi-AgEIcHlwaS5vcmc"],
        regex: r"\b(pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,})",
        min_entropy: None,
    },
    Rule {
        id: "docker-config-auth",
        title: "Docker registry credentials (config.json auths)",
        kind: Registry,
        severity: High,
        keywords: &["\"auth\""],
        regex: r#""auth"\s*:\s*"([A-Za-z0-9+/]{8,}={0,2})""#,
        min_entropy: None,
    },
    // --- SaaS API keys ---
    Rule {
        id: "slack-token",
        title: "Slack token",
        kind: ApiKey,
        severity: High,
        keywords: &["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe-"],
        regex: r"\b(xox[baprse]-[A-Za-z0-9\-]{10,250})",
        min_entropy: None,
    },
    Rule {
        id: "slack-webhook-url",
        title: "Slack incoming-webhook URL",
        kind: ApiKey,
        severity: Medium,
        keywords: &["hooks.slack.com"],
        regex: r"https://hooks\.slack\.com/(?:services|workflows)/(T[A-Z0-9]{8,}/B[A-Z0-9]{8,}/[A-Za-z0-9]{24})",
        min_entropy: None,
    },
    Rule {
        id: "stripe-secret-key",
        title: "Stripe live secret or restricted key",
        kind: ApiKey,
        severity: Critical,
        keywords: &["sk_live_", "rk_live_"],
        regex: r"\b([sr]k_live_[A-Za-z0-9]{24,99})\b",
        min_entropy: None,
    },
    Rule {
        id: "stripe-test-key",
        title: "Stripe test secret key",
        kind: ApiKey,
        severity: Low,
        keywords: &["sk_test_"],
        regex: r"\b(sk_test_[A-Za-z0-9]{24,99})\b",
        min_entropy: None,
    },
    Rule {
        id: "sendgrid-api-key",
        title: "SendGrid API key",
        kind: ApiKey,
        severity: High,
        keywords: &["SG."],
        regex: r"\b(SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})(?:[^A-Za-z0-9_\-]|$)",
        min_entropy: None,
    },
    Rule {
        id: "shopify-access-token",
        title: "Shopify access token",
        kind: ApiKey,
        severity: High,
        keywords: &["shpat_", "shpca_", "shppa_", "shpss_"],
        regex: r"\b(shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32})\b",
        min_entropy: None,
    },
    Rule {
        id: "openai-api-key",
        title: "OpenAI API key",
        kind: ApiKey,
        severity: High,
        keywords: &["T3BlbkFJ"],
        regex: r"\b(sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,74}T3BlbkFJ[A-Za-z0-9_\-]{20,74})",
        min_entropy: None,
    },
    Rule {
        id: "anthropic-api-key",
        title: "Anthropic API key",
        kind: ApiKey,
        severity: High,
        keywords: &["sk-ant-"],
        regex: r"\b(sk-ant-(?:api03|admin01)-[A-Za-z0-9_\-]{80,100})",
        min_entropy: None,
    },
    Rule {
        id: "huggingface-token",
        title: "Hugging Face access token",
        kind: ApiKey,
        severity: High,
        keywords: &["hf_"],
        regex: r"\b(hf_[A-Za-z]{34})\b",
        min_entropy: Some(3.5),
    },
    Rule {
        id: "jwt",
        title: "JSON Web Token",
        kind: ApiKey,
        severity: Medium,
        keywords: &["eyJ"],
        regex: r"\b(eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{16,})",
        min_entropy: None,
    },
    // --- Connection strings ---
    Rule {
        id: "database-url-with-password",
        title: "Database URL with an embedded password",
        kind: ConnectionString,
        severity: High,
        keywords: &[
            "postgres://",
            "postgresql://",
            "mysql://",
            "mariadb://",
            "mongodb://",
            "mongodb+srv://",
            "redis://",
            "rediss://",
            "amqp://",
            "amqps://",
        ],
        regex: r"\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?)://[^\s:/@]*:([^\s:/@]{3,})@[A-Za-z0-9.\-\[\]]+",
        min_entropy: None,
    },
    Rule {
        id: "url-with-password",
        title: "HTTP(S) or FTP URL with an embedded password",
        kind: ConnectionString,
        severity: Medium,
        keywords: &["http://", "https://", "ftp://"],
        regex: r"\b(?:https?|ftp)://[A-Za-z0-9._%+\-]+:([^\s:/@]{6,})@[A-Za-z0-9.\-]+",
        min_entropy: Some(3.0),
    },
    Rule {
        id: "netrc-password",
        title: "Password in a .netrc entry",
        kind: ConnectionString,
        severity: High,
        keywords: &["machine"],
        regex: r"(?m)^\s*machine\s+\S+\s+login\s+\S+\s+password\s+(\S{4,})",
        min_entropy: Some(3.0),
    },
    // --- Infrastructure ---
    Rule {
        id: "kubeconfig-client-key",
        title: "Client private key embedded in a kubeconfig",
        kind: Infrastructure,
        severity: Critical,
        keywords: &["client-key-data"],
        regex: r"client-key-data:\s*([A-Za-z0-9+/=]{40,})",
        min_entropy: None,
    },
    Rule {
        id: "kubernetes-bearer-token",
        title: "Bearer token in a kubeconfig",
        kind: Infrastructure,
        severity: High,
        keywords: &["token:"],
        regex: r#"(?m)^\s+token:\s+["']?([A-Za-z0-9_\-.]{32,})"#,
        min_entropy: Some(3.5),
    },
    Rule {
        id: "vault-service-token",
        title: "HashiCorp Vault service token",
        kind: Infrastructure,
        severity: High,
        keywords: &["hvs."],
        regex: r"\b(hvs\.[A-Za-z0-9_\-]{24,})",
        min_entropy: None,
    },
    Rule {
        id: "vault-batch-token",
        title: "HashiCorp Vault batch token",
        kind: Infrastructure,
        severity: High,
        keywords: &["hvb."],
        regex: r"\b(hvb\.[A-Za-z0-9_\-]{24,})",
        min_entropy: None,
    },
    Rule {
        id: "terraform-cloud-token",
        title: "Terraform Cloud / Enterprise API token",
        kind: Infrastructure,
        severity: High,
        keywords: &[".atlasv1."],
        regex: r"\b([A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_\-=]{60,70})",
        min_entropy: None,
    },
    // --- Generic ---
    Rule {
        id: "generic-password-assignment",
        title: "A password or secret assigned in configuration",
        kind: Generic,
        severity: Medium,
        keywords: &[
            "password",
            "passwd",
            "secret",
            "api_key",
            "apikey",
            "api-key",
            "auth_token",
            "access_token",
        ],
        regex: r#"(?i)\b(?:[a-z0-9_.\-]*password|passwd|[a-z0-9_.\-]*secret|api[_\-]?key|auth_?token|access_?token)["']?\s*[:=]\s*["']?([^\s"'`#;,:<>{}()\[\]$%\\]{8,64})"#,
        min_entropy: Some(3.0),
    },
];

/// The rule with this id.
pub fn rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}
