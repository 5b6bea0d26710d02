"""Quality labels measured, never invented: utility from a real FR model, perceptual from a full-reference measure."""
