//! `ASSEMBLYAI_SPEECH_MODELS`: which AssemblyAI streaming model transcribes which party: a table from language to model
//! (`ASSEMBLYAI_SPEECH_MODELS`, defaults below), checked against the languages each model
//! really supports, so an unsupported language is refused at dial time instead of becoming
//! a silent English session.

/// `key=model` entries separated by `;`, keys separated by `,`. A key is a primary language
/// subtag (`pt` covers `pt-BR`), `auto` (the party's language is detected), or `*` (any
/// other language).
pub const DEFAULT_TABLE: &str = "en=universal-streaming-english;\
     es,fr,de,it,pt,auto=universal-streaming-multilingual;*=whisper-rt";

/// A parsed table: `(key, model)` in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeechModels(Vec<(String, String)>);

/// The session a party gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeechChoice {
    pub model: String,
    /// Ask AssemblyAI for `language_code` per turn (the party's language is `auto`).
    pub language_detection: bool,
}

impl SpeechModels {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (keys, model) = entry
                .split_once('=')
                .ok_or_else(|| format!("`{entry}` is not `language=model`"))?;
            let model = model.trim();
            if model_languages(model).is_none() {
                return Err(format!("`{model}` is not an AssemblyAI streaming model"));
            }
            for key in keys.split(',').map(str::trim) {
                if key.is_empty() {
                    return Err(format!("`{entry}` has an empty language"));
                }
                if key == "auto" && !detects_language(model) {
                    return Err(format!("`{model}` cannot detect languages (auto)"));
                }
                entries.push((key.to_ascii_lowercase(), model.to_owned()));
            }
        }
        if entries.is_empty() {
            return Err("the table is empty".into());
        }
        Ok(Self(entries))
    }

    pub fn defaults() -> Self {
        Self::parse(DEFAULT_TABLE).expect("the default table parses")
    }

    /// The model for a party speaking `language` (BCP-47 or `auto`), or why there is none.
    pub fn choose(&self, language: &str) -> Result<SpeechChoice, String> {
        let key = if language == "auto" {
            "auto".to_owned()
        } else {
            language
                .split('-')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase()
        };
        let model = self
            .0
            .iter()
            .find(|(k, _)| *k == key)
            .or_else(|| {
                (key != "auto")
                    .then(|| self.0.iter().find(|(k, _)| k == "*"))
                    .flatten()
            })
            .map(|(_, model)| model.as_str())
            .ok_or_else(|| format!("no speech model is configured for `{language}`"))?;
        if key == "auto" {
            // whisper-rt always detects; the multilingual model does when asked.
            return Ok(SpeechChoice {
                model: model.to_owned(),
                language_detection: model == "universal-streaming-multilingual",
            });
        }
        let supported = model_languages(model).unwrap_or_default();
        if !supported.contains(&key.as_str()) {
            return Err(format!(
                "language `{language}` is not supported for live transcription (speech model `{model}` covers {})",
                supported.join(", ")
            ));
        }
        Ok(SpeechChoice {
            model: model.to_owned(),
            language_detection: false,
        })
    }
}

/// The streaming models and the languages (ISO 639-1 primary subtags) each transcribes.
/// `whisper-rt` detects the language itself and takes no language parameter; the
/// multilingual model reports it per turn when asked (`language_detection=true`).
pub const SPEECH_MODELS: &[(&str, &[&str])] = &[
    ("universal-streaming-english", &["en"]),
    (
        "universal-streaming-multilingual",
        &["en", "es", "fr", "de", "it", "pt"],
    ),
    ("u3-rt-pro", &["en", "es", "fr", "de", "it", "pt"]),
    ("whisper-rt", WHISPER_LANGUAGES),
];

/// Whisper's 99 languages.
const WHISPER_LANGUAGES: &[&str] = &[
    "af", "am", "ar", "as", "az", "ba", "be", "bg", "bn", "bo", "br", "bs", "ca", "cs", "cy", "da",
    "de", "el", "en", "es", "et", "eu", "fa", "fi", "fo", "fr", "gl", "gu", "ha", "haw", "he",
    "hi", "hr", "ht", "hu", "hy", "id", "is", "it", "ja", "jw", "ka", "kk", "km", "kn", "ko", "la",
    "lb", "ln", "lo", "lt", "lv", "mg", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "ne", "nl",
    "nn", "no", "oc", "pa", "pl", "ps", "pt", "ro", "ru", "sa", "sd", "si", "sk", "sl", "sn", "so",
    "sq", "sr", "su", "sv", "sw", "ta", "te", "tg", "th", "tk", "tl", "tr", "tt", "uk", "ur", "uz",
    "vi", "yi", "yo", "yue", "zh",
];

/// The languages `model` transcribes; `None` for a model AssemblyAI does not have.
pub fn model_languages(model: &str) -> Option<&'static [&'static str]> {
    SPEECH_MODELS
        .iter()
        .find(|(name, _)| *name == model)
        .map(|(_, languages)| *languages)
}

/// Models that report the language of each turn (`auto` parties need one).
pub fn detects_language(model: &str) -> bool {
    matches!(model, "universal-streaming-multilingual" | "whisper-rt")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_choose_the_documented_models() {
        let table = SpeechModels::defaults();
        let model = |l: &str| table.choose(l).map(|c| c.model);
        assert_eq!(model("en").unwrap(), "universal-streaming-english");
        assert_eq!(model("en-GB").unwrap(), "universal-streaming-english");
        for l in ["es", "fr", "de", "it", "pt", "pt-BR"] {
            assert_eq!(model(l).unwrap(), "universal-streaming-multilingual", "{l}");
        }
        assert_eq!(model("ja").unwrap(), "whisper-rt");
        assert_eq!(model("zh-Hans").unwrap(), "whisper-rt");
        let auto = table.choose("auto").unwrap();
        assert_eq!(auto.model, "universal-streaming-multilingual");
        assert!(auto.language_detection);
        assert!(!table.choose("es").unwrap().language_detection);
        let refused = table.choose("tlh").unwrap_err();
        assert!(refused.contains("`tlh`"), "{refused}");
    }

    #[test]
    fn a_table_naming_what_assemblyai_lacks_is_refused() {
        assert!(SpeechModels::parse("en=universal-streaming-klingon").is_err());
        assert!(SpeechModels::parse("auto=universal-streaming-english").is_err());
        assert!(SpeechModels::parse("").is_err());
        let strict = SpeechModels::parse("en=universal-streaming-english").unwrap();
        assert!(strict.choose("es").is_err());
        assert!(strict.choose("auto").is_err());
        // A key the model does not cover is refused at choice time, naming the language.
        let wrong = SpeechModels::parse("es=universal-streaming-english").unwrap();
        assert!(wrong.choose("es").unwrap_err().contains("`es`"));
    }
}
