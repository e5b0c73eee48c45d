"""The AWS adapters on DynamoDB: the state store (events, documents) and the session store."""
