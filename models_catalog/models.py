# The catalogue of GGUF models arrives with the downloads issue; the app exists so the layout is stable.
