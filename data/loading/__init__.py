"""Loading for training and evaluation: streaming shards (local or S3), the pixels every reader
shares, the caption tokenizer."""
