def main():
    print("sim")
