"""Text rules shared by data cleaning and serving safety: PII, blocklists, CJK script ranges,
normalising for matching, prompt-injection rules. Imports no stage package."""
