"""fiqa-sdk, host side: teachers, labels, training, students, distillation, quantisation, export, CLIs."""
