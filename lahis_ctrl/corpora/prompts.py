"""QA prompts for the 12 XQuAD languages, in two styles.

* "paper": the reference code's style - a system instruction, the context, the question and an answer
  cue, all written in the target language, e.g. (en)
  `[System Prompt]Based on the given context, give the answer to the question directly.[Context]...[Question]...[Answer]`.
  The reference has such templates for en zh de hi th vi es tr el; these are the project's own wording
  for all 12 languages. The answer follows the cue directly.
* "lm_eval": lm-evaluation-harness 0.4.13's built-in xquad_<lang> prompt (tasks/xquad/xquad_<lang>.yaml,
  `doc_to_text`), copied character for character - including its Arabic cue "سيا" - so results are
  comparable with `lm_eval --tasks xquad_<lang>`. The answer follows after a space (target_delimiter).
"""

from __future__ import annotations

import re

from ..core.errors import LahisError
from .xquad import XQUAD_LANGS, check_lang

PAPER_TEMPLATES: dict[str, str] = {
    "ar": "[موجه النظام]بناءً على السياق المعطى، أجب عن السؤال مباشرة.[السياق]{context}[السؤال]{question}[الإجابة]",
    "de": "[Systemanweisung]Beantworte die Frage direkt anhand des gegebenen Kontexts.[Kontext]{context}[Frage]{question}[Antwort]",
    "el": "[Οδηγία συστήματος]Με βάση το δεδομένο κείμενο, δώσε απευθείας την απάντηση στην ερώτηση.[Κείμενο]{context}[Ερώτηση]{question}[Απάντηση]",
    "en": "[System Prompt]Based on the given context, give the answer to the question directly.[Context]{context}[Question]{question}[Answer]",
    "es": "[Instrucción del sistema]Según el contexto dado, responde directamente a la pregunta.[Contexto]{context}[Pregunta]{question}[Respuesta]",
    "hi": "[सिस्टम निर्देश]दिए गए संदर्भ के आधार पर प्रश्न का उत्तर सीधे दीजिए।[संदर्भ]{context}[प्रश्न]{question}[उत्तर]",
    "ro": "[Instrucțiune de sistem]Pe baza contextului dat, răspunde direct la întrebare.[Context]{context}[Întrebare]{question}[Răspuns]",
    "ru": "[Системная инструкция]Исходя из данного контекста, дай прямой ответ на вопрос.[Контекст]{context}[Вопрос]{question}[Ответ]",
    "th": "[คำสั่งระบบ]จากบริบทที่ให้มา จงตอบคำถามโดยตรง[บริบท]{context}[คำถาม]{question}[คำตอบ]",
    "tr": "[Sistem Talimatı]Verilen bağlama dayanarak soruyu doğrudan yanıtla.[Bağlam]{context}[Soru]{question}[Cevap]",
    "vi": "[Lời nhắc hệ thống]Dựa vào ngữ cảnh đã cho, hãy trả lời câu hỏi một cách trực tiếp.[Ngữ cảnh]{context}[Câu hỏi]{question}[Trả lời]",
    "zh": "[系统提示]根据给定的上下文，直接给出问题的答案。[上下文]{context}[问题]{question}[答案]",
}

# lm-eval 0.4.13 tasks/xquad/xquad_<lang>.yaml doc_to_text, with {{x}} written as {x}.
LM_EVAL_TEMPLATES: dict[str, str] = {
    "ar": "سيا: {context}\n\nسؤال: {question}\n\nإجابة:",
    "de": "Kontext: {context}\n\nFrage: {question}\n\nAntwort:",
    "el": "Συμφραζόμενα: {context}\n\nΕρώτηση: {question}\n\nΑπάντηση:",
    "en": "Context: {context}\n\nQuestion: {question}\n\nAnswer:",
    "es": "Contexto: {context}\n\nPregunta: {question}\n\nRespuesta:",
    "hi": "प्रसंग: {context}\n\nसवाल: {question}\n\nउत्तर:",
    "ro": "Context: {context}\n\nÎntrebare: {question}\n\nRăspuns:",
    "ru": "Контекст: {context}\n\nВопрос: {question}\n\nОтвет:",
    "th": "บริบท: {context}\n\nคำถาม: {question}\n\nคำตอบ:",
    "tr": "Bağlam: {context}\n\nSoru: {question}\n\nCevap:",
    "vi": "Bối cảnh: {context}\n\nCâu hỏi: {question}\n\nTrả lời:",
    "zh": "语境: {context}\n\n问题: {question}\n\n回答:",
}

STYLES: dict[str, dict[str, str]] = {"paper": PAPER_TEMPLATES, "lm_eval": LM_EVAL_TEMPLATES}
# What goes between the prompt and the answer in training targets.
ANSWER_DELIMITER: dict[str, str] = {"paper": "", "lm_eval": " "}

_FIELD = re.compile(r"\{(context|question)\}")

assert set(PAPER_TEMPLATES) == set(LM_EVAL_TEMPLATES) == set(XQUAD_LANGS)


def _check_style(style: str) -> str:
    if style not in STYLES:
        raise LahisError(f"unknown prompt style '{style}': use one of {', '.join(STYLES)}")
    return style


def format_prompt(row: dict, lang: str, style: str = "paper") -> str:
    """The prompt for one QA row ({context, question, ...}) in `lang`; the model continues with the answer."""
    templates = STYLES[_check_style(style)]
    check_lang(lang, XQUAD_LANGS, "the QA prompts")
    # one pass over the template: a context holding braces or the text "{question}" stays as it is
    return _FIELD.sub(lambda m: row[m.group(1)], templates[lang])


def format_target(answer: str, style: str = "paper") -> str:
    """The training target that follows format_prompt(...): the answer, after the style's delimiter."""
    return ANSWER_DELIMITER[_check_style(style)] + answer
