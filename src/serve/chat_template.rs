//! Chat messages → prompt text. A model folder whose `tokenizer_config.json` has a
//! `chat_template` is rendered with it (Jinja through minijinja, as transformers'
//! `apply_chat_template` does: `messages`, `bos_token`, `eos_token`,
//! `add_generation_prompt = true`, `raise_exception`, `trim_blocks` and `lstrip_blocks` on);
//! the text is tokenized without adding BOS (the template writes it). Without a template, the
//! documented plain fallback: the model's BOS, then one line `ROLE: CONTENT` per message, then
//! `assistant:`.

use std::path::Path;

use minijinja::{Environment, ErrorKind};
use serde_json::Value;

use super::error::ApiError;
use super::request::Message;

/// The longest `tokenizer_config.json` read (the file is read whole).
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Errors reading a model's chat template at start-up.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    #[error("{path}: `chat_template` does not compile: {message}")]
    Compile { path: String, message: String },
}

/// How chat prompts are made for this model.
pub enum ChatTemplate {
    /// The model's Jinja template and the special tokens it refers to.
    Jinja {
        env: Box<Environment<'static>>,
        bos_token: String,
        eos_token: String,
    },
    /// No template: `ROLE: CONTENT` lines, then `assistant:` (BOS prepended by the tokenizer).
    Plain,
}

/// A rendered prompt: text, and whether the tokenizer should still prepend BOS (the plain
/// fallback; a template writes its own `bos_token`).
#[derive(Debug, PartialEq)]
pub struct Rendered {
    pub text: String,
    pub add_bos: bool,
}

impl ChatTemplate {
    /// The template of a model folder (`Plain` for a graph file or a folder without one).
    pub fn for_model(model: &Path) -> Result<ChatTemplate, TemplateError> {
        let path = model.join("tokenizer_config.json");
        if !model.is_dir() || !path.is_file() {
            return Ok(ChatTemplate::Plain);
        }
        let shown = path.display().to_string();
        let bad = |message: String| TemplateError::Config {
            path: shown.clone(),
            message,
        };
        let bytes =
            troupe_engine::files::read_bytes_capped(&path, MAX_CONFIG_BYTES, "tokenizer config")
                .map_err(|e| bad(e.to_string()))?;
        let config: Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let Some(source) = template_source(&config).map_err(bad)? else {
            return Ok(ChatTemplate::Plain);
        };
        ChatTemplate::jinja(
            source,
            special_token(&config, "bos_token"),
            special_token(&config, "eos_token"),
        )
        .map_err(|message| TemplateError::Compile {
            path: shown.clone(),
            message,
        })
    }

    /// A template from its source (errors: the compiler's message).
    pub fn jinja(source: String, bos_token: String, eos_token: String) -> Result<Self, String> {
        let mut env = Environment::new();
        // As transformers compiles chat templates.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source)
            .map_err(|e| e.to_string())?;
        Ok(ChatTemplate::Jinja {
            env: Box::new(env),
            bos_token,
            eos_token,
        })
    }

    /// The prompt for `messages` (a template that fails, e.g. by `raise_exception` on roles it
    /// does not take, is the request's fault: 400).
    pub fn render(&self, messages: &[Message]) -> Result<Rendered, ApiError> {
        match self {
            ChatTemplate::Plain => {
                let mut text = String::new();
                for m in messages {
                    text.push_str(&m.role);
                    text.push_str(": ");
                    text.push_str(&m.content);
                    text.push('\n');
                }
                text.push_str("assistant:");
                Ok(Rendered {
                    text,
                    add_bos: true,
                })
            }
            ChatTemplate::Jinja {
                env,
                bos_token,
                eos_token,
            } => {
                let template = env
                    .get_template("chat")
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                let text = template
                    .render(minijinja::context! {
                        messages => minijinja::Value::from_serialize(messages),
                        bos_token => bos_token,
                        eos_token => eos_token,
                        add_generation_prompt => true,
                    })
                    .map_err(|e| {
                        ApiError::invalid("messages", format!("the chat template failed: {e}"))
                    })?;
                Ok(Rendered {
                    text,
                    add_bos: false,
                })
            }
        }
    }
}

/// `chat_template`: a string, or HF's list of `{name, template}` (the one named `default`,
/// else the first).
fn template_source(config: &Value) -> Result<Option<String>, String> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let named = |want: Option<&str>| {
                list.iter().find(|t| match want {
                    Some(w) => t.get("name").and_then(Value::as_str) == Some(w),
                    None => true,
                })
            };
            let chosen = named(Some("default")).or_else(|| named(None));
            match chosen
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
            {
                Some(s) => Ok(Some(s.to_string())),
                None => Err("`chat_template` list has no template string".into()),
            }
        }
        Some(_) => Err("`chat_template` must be a string or a list of templates".into()),
    }
}

/// A special token's text: a string, or an object with `content` (HF's AddedToken).
fn special_token(config: &Value, key: &str) -> String {
    match config.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<Message> {
        vec![
            Message {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            Message {
                role: "user".into(),
                content: "Hi".into(),
            },
        ]
    }

    #[test]
    fn plain_fallback_is_role_lines() {
        let r = ChatTemplate::Plain.render(&msgs()).expect("renders");
        assert_eq!(r.text, "system: Be brief.\nuser: Hi\nassistant:");
        assert!(r.add_bos);
    }

    #[test]
    fn jinja_template_sees_messages_and_tokens() {
        let t = ChatTemplate::jinja(
            "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}".into(),
            "<s>".into(),
            "</s>".into(),
        )
        .expect("compiles");
        let r = t.render(&msgs()).expect("renders");
        assert_eq!(r.text, "<s><system>Be brief.<user>Hi<assistant>");
        assert!(!r.add_bos);
    }

    #[test]
    fn blocks_are_trimmed_as_transformers_does() {
        let t = ChatTemplate::jinja(
            "{% for m in messages %}{{ m.content }}{% if not loop.last %}\n{% endif %}{% endfor %}"
                .into(),
            String::new(),
            String::new(),
        )
        .expect("compiles");
        // trim_blocks drops the newline right after `{% if ... %}`, as transformers' Jinja does.
        assert_eq!(t.render(&msgs()).expect("renders").text, "Be brief.Hi");
    }

    #[test]
    fn raise_exception_is_a_400() {
        let t = ChatTemplate::jinja(
            "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}".into(),
            String::new(),
            String::new(),
        )
        .expect("compiles");
        let e = t.render(&msgs()).expect_err("refused");
        assert_eq!(e.status, 400);
        assert!(e.message.contains("no system role"), "{}", e.message);
    }

    #[test]
    fn bundled_model_has_a_template_and_the_tiny_one_does_not() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        assert!(matches!(
            ChatTemplate::for_model(&root.join("fortune-tiny")),
            Ok(ChatTemplate::Jinja { .. })
        ));
        assert!(matches!(
            ChatTemplate::for_model(&root.join("deepseek-v3-tiny")),
            Ok(ChatTemplate::Plain)
        ));
    }
}
