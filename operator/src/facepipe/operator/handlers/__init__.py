"""What the Kopf handlers in facepipe.operator.main do."""
