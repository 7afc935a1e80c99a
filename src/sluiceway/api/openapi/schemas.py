"""The schemas of the bodies and answers the routes read and write themselves (FastAPI sees
none of them), as the document's ``components/schemas``."""

from __future__ import annotations

from typing import Any

_VECTOR = {"type": "array", "items": {"type": "integer"}, "minItems": 1}
_PREDICTION = {
    "type": "object",
    "required": ["label", "score"],
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
}

SCHEMAS: dict[str, Any] = {
    "Detail": {
        "type": "object",
        "required": ["detail"],
        "properties": {"detail": {"type": "string"}},
        "description": "What is wrong, in one line.",
    },
    "KioskRequest": {
        "type": "object",
        "required": ["training_data", "query_input"],
        "properties": {
            "training_data": {
                "type": "object",
                "required": ["training_data"],
                "properties": {
                    "training_data": {
                        "type": "array",
                        "items": _VECTOR,
                        "minItems": 1,
                        "description": "rows [x1, ..., label], all of one length, at least k",
                    }
                },
            },
            "query_input": {
                "type": "object",
                "required": ["query_input"],
                "properties": {
                    "query_input": {
                        "anyOf": [_VECTOR, {"type": "array", "items": _VECTOR, "minItems": 1}],
                        "description": "one query vector, or a list of them",
                    }
                },
            },
        },
    },
    "KioskAnswer": {
        "type": "object",
        "required": ["classification_result"],
        "properties": {"classification_result": {"type": "array", "items": {"type": "integer"}}},
    },
    "BirdRequest": {
        "type": "object",
        "properties": {
            "images": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                "description": "http(s) URLs of bird photos",
            },
            "k": {"type": "integer", "default": 3},
        },
    },
    "BirdAnswer": {
        "type": "object",
        "required": ["successful_results", "failed_results", "time_taken", "errors"],
        "properties": {
            "successful_results": {"type": "object"},
            "failed_results": {"type": "array", "items": {"type": "string"}},
            "time_taken": {"type": "number"},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
    },
    "UploadForm": {
        "type": "object",
        "properties": {"file": {"type": "string", "format": "binary"}},
    },
    "PredictAnswer": {
        "type": "object",
        "required": ["success", "prediction", "score"],
        "properties": {
            "success": {"type": "boolean"},
            "prediction": {"type": ["string", "null"]},
            "score": {"type": ["number", "null"]},
        },
    },
    "FeedbackForm": {
        "type": "object",
        "properties": {
            "image": {"type": "string", "description": "a stored upload's name"},
            "prediction": {"type": "string"},
            "score": {"type": "string", "description": "a number between 0 and 1"},
            "correct_label": {"type": "string"},
            "report": {
                "type": "string",
                "description": "the seed page's one field: a short dict-like text, kept as sent",
            },
        },
    },
    "ClassifyRequest": {
        "type": "object",
        "required": ["images"],
        "additionalProperties": False,
        "properties": {
            "images": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "description": "base64 images or data: URLs",
            },
            "k": {"type": "integer", "default": 5},
        },
    },
    "ClassifyAnswer": {
        "type": "object",
        "required": ["model", "results"],
        "properties": {
            "model": {"type": "string"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "predictions": {"type": "array", "items": _PREDICTION},
                        "error": {"type": "string"},
                    },
                },
            },
        },
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "inputs": {
                "type": "object",
                "additionalProperties": {"type": "array"},
                "description": "input name → nested lists, the first axis the request's rows",
            }
        },
    },
    "InferAnswer": {
        "type": "object",
        "required": ["model", "version", "outputs"],
        "properties": {
            "model": {"type": "string"},
            "version": {"type": "string"},
            "outputs": {"type": "object", "additionalProperties": {"type": "array"}},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["models"],
        "properties": {"models": {"type": "array", "items": {"type": "object"}}},
    },
    "RepositoryEntry": {
        "type": "object",
        "required": ["name", "version", "state", "reason"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "state": {"enum": ["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]},
            "reason": {"type": "string"},
        },
    },
    "ProtocolError": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
        "description": "The Open Inference Protocol's error shape.",
    },
    "LogSettings": {
        "type": "object",
        "description": "Triton's log settings (the logging extension); a change names any of them.",
        "properties": {
            "log_file": {"type": "string", "description": 'always "": logs go to stderr'},
            "log_info": {"type": "boolean"},
            "log_warning": {"type": "boolean"},
            "log_error": {"type": "boolean"},
            "log_verbose_level": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
            "log_format": {"enum": ["default", "ISO8601"]},
        },
    },
    "SharedMemoryRegistration": {
        "type": "object",
        "required": ["key", "byte_size"],
        "properties": {
            "key": {"type": "string", "description": "the POSIX shared-memory object, '/name'"},
            "offset": {"type": "integer", "minimum": 0, "default": 0},
            "byte_size": {"type": "integer", "minimum": 1},
        },
    },
    "SharedMemoryRegion": {
        "type": "object",
        "required": ["name", "key", "offset", "byte_size"],
        "properties": {
            "name": {"type": "string"},
            "key": {"type": "string"},
            "offset": {"type": "integer"},
            "byte_size": {"type": "integer"},
        },
    },
    "CaptionRequest": {
        "type": "object",
        "required": ["image"],
        "properties": {"image": {"type": "string", "description": "base64 or a data: URL"}},
    },
    "CaptionError": {
        "type": "object",
        "description": "Django REST framework's shape: field (or detail) to messages.",
        "additionalProperties": {
            "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]
        },
    },
}
